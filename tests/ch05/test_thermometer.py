"""Chapter 5: data, model, loss, broadcasting (ch05_learning/thermometer.py)."""
import subprocess
import sys

import torch

from ch05_learning import thermometer
from common.data import REPO_ROOT


def test_data_is_the_books_eleven_pairs():
    t_c, t_u = thermometer.thermometer_data()
    assert t_c.shape == t_u.shape == (11,)
    assert t_c.dtype == t_u.dtype == torch.float32
    assert (t_c[0].item(), t_u[0].item()) == (0.5, torch.tensor(35.7).item())
    assert (t_c[-1].item(), t_u[-1].item()) == (21.0, torch.tensor(68.4).item())


def test_initial_loss_matches_the_book():
    t_c, t_u = thermometer.thermometer_data()
    t_p = thermometer.model(t_u, torch.ones(()), torch.zeros(()))
    assert t_p.shape == (11,)
    assert abs(thermometer.loss_fn(t_p, t_c).item() - 1763.8846) < 1e-3


def test_broadcasting_shapes():
    shapes = thermometer.broadcasting_demo()
    assert shapes["x * y"] == (3, 1)
    assert shapes["y * z"] == (3, 3)
    assert shapes["y * z * a"] == (2, 3, 3)


def test_main_writes_the_scatter_png(tmp_path):
    result = thermometer.main(["--out", str(tmp_path)])
    assert result["png"] == tmp_path / "thermometer_data.png"
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert abs(result["loss"] - 1763.8846) < 1e-3


def test_runs_as_a_script(tmp_path):
    proc = subprocess.run([sys.executable, "ch05_learning/thermometer.py", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1763.88" in proc.stdout
    assert (tmp_path / "thermometer_data.png").exists()
