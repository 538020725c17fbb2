"""Chapter 3: NumPy interoperability: `.numpy()` and `torch.from_numpy` share memory.

    python ch03_tensors/numpy_interop.py
"""
import argparse

import numpy as np
import torch

from common.errors import run_cli


def tensor_to_numpy():
    """`points.numpy()` is a float32 array over the tensor's own memory: edit one, see both."""
    points = torch.ones(3, 4)
    points_np = points.numpy()
    points_np[0, 0] = 7.0                             # write through the array ...
    points[2, 3] = 9.0                                # ... and through the tensor
    return points, points_np


def numpy_to_tensor():
    """`torch.from_numpy` wraps the array without copying and keeps NumPy's float64 default."""
    array = np.ones((3, 4))                           # NumPy's default dtype: float64
    points = torch.from_numpy(array)
    array[1, 1] = 5.0
    points[0, 2] = 3.0
    return array, points


def copies():
    """The calls that copy: `torch.tensor(array)`, and `.float()` of a float64 tensor."""
    array = np.ones((2, 2))
    copied = torch.tensor(array)                      # always a copy (dtype kept: float64)
    shared = torch.as_tensor(array)                   # shares when it can, like from_numpy
    as_float32 = torch.from_numpy(array).float()      # the usual next step: a float32 copy
    array[0, 0] = 4.0
    return {"torch.tensor(array)": copied, "torch.as_tensor(array)": shared,
            "torch.from_numpy(array).float()": as_float32}


def shares_memory(t, array):
    """True when the tensor and the array start at the same address."""
    return t.data_ptr() == array.__array_interface__["data"][0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    points, points_np = tensor_to_numpy()
    print(f"points = torch.ones(3, 4); points_np = points.numpy() -> {points_np.dtype} "
          f"{points_np.shape}, same memory: {shares_memory(points, points_np)}")
    print("after points_np[0, 0] = 7 and points[2, 3] = 9, the tensor holds both:")
    print(points)
    array, from_np = numpy_to_tensor()
    print(f"torch.from_numpy(np.ones((3, 4))) -> {from_np.dtype}, same memory: "
          f"{shares_memory(from_np, array)}")
    print("after array[1, 1] = 5 and tensor[0, 2] = 3, the array holds both:")
    print(array)
    print("then array[0, 0] = 4 with:")
    for name, t in copies().items():
        print(f"  {name:<32} {t.dtype}, sees the edit: {t[0, 0].item() == 4.0}")
    return {"points": points, "points_np": points_np, "array": array, "from_numpy": from_np}


if __name__ == "__main__":
    run_cli(main)
