"""check_env.py and hub_note.py."""
import pytest
import torch

from ch01_intro import check_env, hub_note


def test_versions_and_a_missing_package():
    found = check_env.versions(("numpy", "surely_not_a_package_xyz"))
    assert found["python"].count(".") == 2
    assert found["numpy"] and found["surely_not_a_package_xyz"] is None


def test_main_runs_the_cpu_smoke_test(tmp_path, capsys):
    results = check_env.main(["--data-dir", str(tmp_path)])
    assert results["devices"]["cpu"] is True
    assert results["versions"]["torch"] == torch.__version__
    out = capsys.readouterr().out
    assert "ones(3,3)+ones(3,3)==2 ok" in out and "GB free" in out


def test_every_visible_device_is_listed():
    names = [str(d) for d in check_env.devices()]
    assert names[0] == "cpu"
    assert sum(n.startswith("cuda") for n in names) == torch.cuda.device_count()


@pytest.mark.gpu
def test_gpu_parity(cuda):
    assert check_env.smoke_test(cuda)
    assert check_env.gpu_parity(cuda) < 1e-3


def test_hub_note_explains_without_touching_the_network(monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("torch.hub must not be called without --run")

    monkeypatch.setattr(torch.hub, "load", no_network)
    monkeypatch.setattr(torch.hub, "list", no_network)
    text = hub_note.main([])
    assert "needs the network" in text and "--run" in text
    assert "torch.hub.load('pytorch/vision', 'resnet18'" in capsys.readouterr().out
