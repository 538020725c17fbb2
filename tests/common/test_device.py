"""common/device.py: device choice and seeding."""
import numpy as np
import pytest
import torch

from common.device import pick_device, seed_everything
from common.errors import DataError


def test_auto_is_cpu_when_cuda_is_hidden(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")


def test_cpu_and_tensors_land_there():
    device = pick_device("cpu")
    assert torch.ones(2, device=device).device == device
    assert next(torch.nn.Linear(2, 2).to(device).parameters()).device == device


def test_absent_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DataError, match="CUDA is not available"):
        pick_device("cuda:0")


def test_nonsense_device_is_an_error():
    with pytest.raises(DataError, match="unknown device"):
        pick_device("gpu-please")


def test_seed_everything_repeats_all_generators():
    seed_everything(3)
    a = (torch.rand(3), np.random.rand(3))
    seed_everything(3)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.gpu
def test_cuda_is_picked_when_present(cuda):
    assert pick_device("auto").type == "cuda"
    assert pick_device("cuda:0") == torch.device("cuda", 0)
