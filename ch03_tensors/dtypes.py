"""Chapter 3: numeric types: defaults, conversions and mixed-type arithmetic.

    python ch03_tensors/dtypes.py
"""
import argparse

import torch

from ch03_tensors.tensors_basics import book_points
from common.errors import run_cli

# The book's table: dtype and its alias, with the bytes one element takes.
BOOK_DTYPES = [
    ("torch.float32 / torch.float", torch.float32),
    ("torch.float64 / torch.double", torch.float64),
    ("torch.float16 / torch.half", torch.float16),
    ("torch.int8", torch.int8),
    ("torch.uint8", torch.uint8),
    ("torch.int16 / torch.short", torch.int16),
    ("torch.int32 / torch.int", torch.int32),
    ("torch.int64 / torch.long", torch.int64),
    ("torch.bool", torch.bool),
]


def element_sizes():
    """Bytes per element of each dtype in the book's list."""
    return {name: torch.empty(0, dtype=dtype).element_size() for name, dtype in BOOK_DTYPES}


def defaults():
    """What PyTorch picks when not told: float32 for floats, int64 for integers and indices."""
    points = book_points()
    return {
        "torch.tensor([[4.0, 1.0], ...])": points.dtype,
        "torch.ones(3)": torch.ones(3).dtype,
        "torch.tensor([1, 2])": torch.tensor([1, 2]).dtype,
        "points.argmax(dim=0) (indices)": points.argmax(dim=0).dtype,
        "points > 2 (mask)": (points > 2).dtype,
    }


def conversions():
    """The three ways to ask for a dtype: at creation, a named method, or `.to(dtype)`."""
    return {
        "torch.ones(10, 2, dtype=torch.double)": torch.ones(10, 2, dtype=torch.double),
        "torch.tensor([[1, 2], [3, 4]], dtype=torch.short)":
            torch.tensor([[1, 2], [3, 4]], dtype=torch.short),
        "torch.zeros(10, 2).double()": torch.zeros(10, 2).double(),
        "torch.ones(10, 2).short()": torch.ones(10, 2).short(),
        "torch.zeros(10, 2).to(torch.double)": torch.zeros(10, 2).to(torch.double),
        "torch.ones(10, 2).to(dtype=torch.short)": torch.ones(10, 2).to(dtype=torch.short),
    }


def mixed_types(seed=0):
    """float64 times int16 promotes to float64: the larger type wins, nothing is truncated."""
    g = torch.Generator().manual_seed(seed)
    points_64 = 10 * torch.rand(5, dtype=torch.double, generator=g)  # x10: book's rand(5) -> 0s
    points_short = points_64.to(torch.short)          # truncates toward zero
    return points_64, points_short, points_64 * points_short


def masked_select():
    """A bool mask picks elements: the points whose x is above 3."""
    points = book_points()
    mask = points[:, 0] > 3
    return mask, points[mask]


def sqrt_of_integers():
    """The chapter's exercise: sqrt of int64 gives float32; in place (`sqrt_`) it cannot."""
    a = torch.tensor(list(range(9)))
    out = torch.sqrt(a)                               # integer input promotes to the default float
    try:
        a.sqrt_()                                     # a float result cannot go into int64
    except RuntimeError as e:
        return out, str(e)
    return out, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    print("bytes per element:")
    for name, size in element_sizes().items():
        print(f"  {name:<30} {size}")
    print("defaults:")
    for expr, dtype in defaults().items():
        print(f"  {expr:<34} {dtype}")
    print("asking for a dtype:")
    for expr, t in conversions().items():
        print(f"  {expr:<52} {t.dtype}")
    points_64, points_short, product = mixed_types()
    print(f"float64 {points_64.round(decimals=3).tolist()}")
    print(f"  .to(short) = {points_short.tolist()}; float64 * int16 -> {product.dtype}")
    mask, picked = masked_select()
    print(f"mask points[:, 0] > 3 = {mask.tolist()} ({mask.dtype}); points[mask] = "
          f"{picked.tolist()}")
    out, error = sqrt_of_integers()
    print(f"torch.sqrt(int64 0..8) -> {out.dtype}; a.sqrt_() -> RuntimeError: {error}")
    return {"defaults": defaults(), "product": product, "sqrt": out, "sqrt_error": error}


if __name__ == "__main__":
    run_cli(main)
