"""Chapter 3: moving tensors between the CPU and a GPU; operations run where the data lives.

    python ch03_tensors/devices.py                # cuda if present, else mps, else cpu
    python ch03_tensors/devices.py --device cpu
"""
import argparse

import torch

from ch03_tensors.tensors_basics import BOOK_POINTS
from common.device import add_device_argument, pick_device
from common.errors import run_cli


def book_ops(device):
    """The book's steps: create on the CPU, `2 * points.to(device)`, `+ 4`, back with `.cpu()`."""
    points = torch.tensor(BOOK_POINTS)                # created on the CPU
    points_dev = 2 * points.to(device=device)         # the copy, then the multiply, on `device`
    points_dev = points_dev + 4                       # still on `device`: results stay put
    points_cpu = points_dev.to(device="cpu")          # copy back to read or print it
    return {"device": points_dev.device, "on_device": points_dev, "cpu": points_cpu}


def create_on(device):
    """Allocate directly on the device: `torch.tensor(..., device=...)`, no CPU round trip."""
    return torch.tensor(BOOK_POINTS, device=device)


def move_spellings(device):
    """The equivalent ways to move: `.to(device=...)`, `.to('cuda:0')`, `.cuda()`, `.cpu()`."""
    points = torch.tensor(BOOK_POINTS)
    moved = {"points.to(device=device)": points.to(device=device)}
    if torch.device(device).type == "cuda":
        moved["points.to(device='cuda:0')"] = points.to(device="cuda:0")
        moved["points.cuda()"] = points.cuda()
        moved["points.cuda(0)"] = points.cuda(0)
    moved["moved.cpu()"] = moved["points.to(device=device)"].cpu()
    return {name: t.device for name, t in moved.items()}


def to_same_device_is_free():
    """`.to()` to the device a tensor is already on returns the tensor itself: no copy."""
    points = torch.tensor(BOOK_POINTS)
    return points.to("cpu") is points


def cpu_device_parity(device, seed=0):
    """Max |CPU - device| over a few ops on the same inputs (0 for exact, tiny for matmul)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 32, generator=g)
    w = torch.randn(32, 16, generator=g)
    ops = {
        "2 * points + 4": lambda p, _x, _w: 2 * p + 4,
        "points.mean(dim=0)": lambda p, _x, _w: p.mean(dim=0),
        "(x @ w).relu()": lambda _p, x, w: (x @ w).relu(),
        "x.softmax(dim=1)": lambda _p, x, _w: x.softmax(dim=1),
    }
    points = torch.tensor(BOOK_POINTS)
    diffs = {}
    for name, op in ops.items():
        expected = op(points, x, w)
        actual = op(points.to(device), x.to(device), w.to(device)).cpu()
        diffs[name] = (actual - expected).abs().max().item()
    return diffs


def mixed_device_error(device):
    """Adding a CPU tensor to a tensor on another device raises; returns the message (or None)."""
    if torch.device(device).type == "cpu":
        return None
    try:
        torch.ones(3, device=device) + torch.ones(3)
    except RuntimeError as e:
        return str(e)
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_device_argument(p)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        print("no GPU here: everything below runs on the CPU (try --device cuda on a GPU machine)")
    ops = book_ops(device)
    print(f"2 * points.to({str(device)!r}) + 4 lives on {ops['device']}:")
    print(f"  {ops['cpu'].tolist()}  (printed after .cpu())")
    print(f"torch.tensor(points, device={str(device)!r}).device = {create_on(device).device}")
    for name, where in move_spellings(device).items():
        print(f"  {name:<28} -> {where}")
    print(f"points.to('cpu') is points: {to_same_device_is_free()} (already there: no copy)")
    diffs = cpu_device_parity(device)
    print(f"max |CPU - {device}|:")
    for name, diff in diffs.items():
        print(f"  {name:<20} {diff:.2e}")
    error = mixed_device_error(device)
    if error:
        print(f"cuda tensor + cpu tensor -> RuntimeError: {error.splitlines()[0]}")
    return {"device": device, "ops": ops, "parity": diffs}


if __name__ == "__main__":
    run_cli(main)
