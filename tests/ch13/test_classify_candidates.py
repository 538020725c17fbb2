"""classify_candidates.py: LUNA16's false-positive reduction track on a tiny synthetic sample."""
import csv

import pytest
import torch

from ch10_luna.model import LunaModel
from ch13_segment.classify_candidates import main
from ch13_segment.evaluate_luna import main as evaluate_main
from ch13_segment.evaluate_luna import read_submission
from common.errors import run_cli
from tests.helpers import save_model_state


@pytest.fixture
def constant_model(tmp_path):
    """A LunaModel whose head ignores the crop: P(nodule) = softmax((0, ln 3))[1] = 3/4."""
    model = LunaModel(conv_channels=2)
    with torch.no_grad():
        model.head_linear.weight.zero_()
        model.head_linear.bias.copy_(torch.tensor([0.0, float(torch.log(torch.tensor(3.0)))]))
    return save_model_state(model, tmp_path / "constant.state")


def test_every_candidate_of_the_scans_is_classified_and_scored(seg_luna, constant_model,
                                                               tmp_path, capsys):
    series = sorted(seg_luna.series)[:2]
    (tmp_path / "series.csv").write_text("\n".join(series) + "\n")
    r = main(["--data-dir", str(seg_luna.root), "--cls-model", constant_model, "--series",
              str(tmp_path / "series.csv"), "--out", str(tmp_path / "out"), "--bootstrap", "20"])
    rows = [row for row in csv.DictReader(open(seg_luna.candidates_csv))
            if row["seriesuid"] in series]
    marks = read_submission(r["submission"])
    assert sorted(marks) == series and r["candidates"] == len(rows) == sum(
        len(m[1]) for m in marks.values())
    probs = torch.tensor([p for m in marks.values() for p in m[1]])
    assert torch.allclose(probs, torch.full_like(probs, 0.75), atol=1e-6)
    # Scored exactly as evaluate_luna.py scores the CSV written.
    again = evaluate_main([str(r["submission"]), "--series", str(tmp_path / "series.csv"),
                           "--out", str(tmp_path / "again"), "--bootstrap", "20"] + [
        "--annotations", str(seg_luna.annotations_csv),
        "--excluded", str(seg_luna.root / "annotations_excluded.csv")])
    assert again["cpm"] == r["cpm"] and again["found"] == r["found"] == r["nodules"]
    assert r["png"].is_file()
    assert capsys.readouterr().out.count("\nCPM ") == 2


def test_the_validation_series_by_default_and_a_scan_not_on_disk_refused(seg_luna,
                                                                         constant_model,
                                                                         tmp_path, capsys):
    r = main(["--data-dir", str(seg_luna.root), "--cls-model", constant_model, "--val-stride",
              "2", "--out", str(tmp_path), "--bootstrap", "0"])
    uids = sorted(seg_luna.series)
    assert r["series"] == uids[::2] and "bootstrap" not in r
    (tmp_path / "s.csv").write_text(f"{uids[0]}\n9.8.7\n")
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--data-dir", str(seg_luna.root), "--cls-model", constant_model,
                       "--series", str(tmp_path / "s.csv"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "9.8.7" in err and "not on disk" in err
