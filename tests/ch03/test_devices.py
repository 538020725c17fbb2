import pytest
import torch

from ch03_tensors import devices

BOOK_RESULT = [[12.0, 6.0], [14.0, 10.0], [8.0, 6.0]]     # 2 * points + 4


def test_book_ops_on_cpu():
    ops = devices.book_ops("cpu")
    assert ops["device"].type == "cpu"
    assert ops["cpu"].tolist() == BOOK_RESULT


def test_to_the_same_device_does_not_copy():
    assert devices.to_same_device_is_free()


def test_cpu_parity_is_exact():
    assert all(d == 0.0 for d in devices.cpu_device_parity("cpu").values())
    assert devices.mixed_device_error("cpu") is None


def test_main_on_cpu(capsys):
    out = devices.main(["--device", "cpu"])
    assert out["ops"]["cpu"].tolist() == BOOK_RESULT
    assert "lives on cpu" in capsys.readouterr().out


def test_main_default_device_runs():
    out = devices.main([])
    assert out["ops"]["cpu"].tolist() == BOOK_RESULT


@pytest.mark.gpu
def test_gpu_moves_and_parity(cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # TF32 drifts ~1e-3
    ops = devices.book_ops(cuda)
    assert ops["device"].type == "cuda" and ops["on_device"].is_cuda
    assert ops["cpu"].device.type == "cpu" and ops["cpu"].tolist() == BOOK_RESULT
    assert devices.create_on(cuda).is_cuda
    moved = devices.move_spellings(cuda)
    assert {moved[k].type for k in moved if k != "moved.cpu()"} == {"cuda"}
    assert moved["moved.cpu()"].type == "cpu"
    diffs = devices.cpu_device_parity(cuda)
    assert diffs["2 * points + 4"] == 0.0
    assert max(diffs.values()) < 1e-4
    assert "device" in devices.mixed_device_error(cuda)


@pytest.mark.gpu
def test_main_on_gpu(cuda):
    out = devices.main(["--device", "cuda"])
    assert out["device"].type == "cuda"
    assert out["ops"]["cpu"].tolist() == BOOK_RESULT
