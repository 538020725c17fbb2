import numpy as np
import torch

from ch03_tensors import numpy_interop as ni


def test_numpy_view_of_a_tensor_shares_memory():
    points, points_np = ni.tensor_to_numpy()
    assert points_np.dtype == np.float32 and points_np.shape == (3, 4)
    assert ni.shares_memory(points, points_np)
    assert points[0, 0].item() == 7.0              # written through the array
    assert points_np[2, 3] == 9.0                  # written through the tensor
    assert points.sum().item() == points_np.sum() == 10 + 7 + 9


def test_from_numpy_keeps_float64_and_shares_memory():
    array, points = ni.numpy_to_tensor()
    assert points.dtype == torch.float64
    assert ni.shares_memory(points, array)
    assert points[1, 1].item() == 5.0              # written through the array
    assert array[0, 2] == 3.0                      # written through the tensor


def test_which_calls_copy():
    c = ni.copies()
    assert c["torch.tensor(array)"][0, 0].item() == 1.0
    assert c["torch.as_tensor(array)"][0, 0].item() == 4.0
    assert c["torch.from_numpy(array).float()"].dtype == torch.float32
    assert c["torch.from_numpy(array).float()"][0, 0].item() == 1.0


def test_main_runs(capsys):
    out = ni.main([])
    assert out["from_numpy"].dtype == torch.float64
    assert "same memory: True" in capsys.readouterr().out
