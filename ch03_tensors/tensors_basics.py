"""Chapter 3: from Python lists to tensors, indexing, and a short tour of the tensor API.

    python ch03_tensors/tensors_basics.py
"""
import argparse

import torch

from common.errors import run_cli

BOOK_POINTS = [[4.0, 1.0], [5.0, 3.0], [2.0, 1.0]]  # three 2D points, one per row (book ch3)


def list_vs_tensor():
    """A Python list holds boxed floats; a tensor holds one block of unboxed 32-bit floats."""
    a_list = [1.0, 2.0, 1.0]
    a_list[2] = 3.0                                 # lists are mutable, element by element
    a = torch.ones(3)
    before = float(a[1])                            # a[1] is a 0-dim tensor; float() unwraps it
    a[2] = 2.0                                      # tensors are mutable the same way
    return {"list": a_list, "a": a, "a1": before}


def points_1d():
    """Coordinates packed flat: x at even indices, y at odd ones."""
    points = torch.zeros(6)                         # allocate, then fill
    points[0], points[1] = 4.0, 1.0
    points[2], points[3] = 5.0, 3.0
    points[4], points[5] = 2.0, 1.0
    same = torch.tensor([4.0, 1.0, 5.0, 3.0, 2.0, 1.0])  # or build it from a list in one go
    assert torch.equal(points, same)
    return points


def book_points():
    """The book's (3, 2) tensor: row i is point i, column 0 is x and column 1 is y."""
    return torch.tensor(BOOK_POINTS)


def indexing(points):
    """The book's indexing examples on `points` (3, 2); each entry is a tensor."""
    return {
        "points[0, 1]": points[0, 1],               # 0-dim: y of the first point
        "points[0]": points[0],                     # (2,): the first point
        "points[1:]": points[1:],                   # (2, 2): all rows after the first
        "points[1:, :]": points[1:, :],             # the same, columns spelled out
        "points[1:, 0]": points[1:, 0],             # (2,): x of the last two points
        "points[None]": points[None],               # (1, 3, 2): a new size-1 dim, as unsqueeze(0)
    }


def transpose_shapes():
    """`torch.transpose(a, 0, 1)` and `a.transpose(0, 1)` are the same call: (3, 2) -> (2, 3)."""
    a = torch.ones(3, 2)
    a_t = torch.transpose(a, 0, 1)
    assert torch.equal(a_t, a.transpose(0, 1))
    return a.shape, a_t.shape


def api_tour(points):
    """One example per family of the tensor API (the book lists them from the docs)."""
    return {
        "creation torch.zeros_like": torch.zeros_like(points),
        "pointwise abs(points - 3)": (points - 3).abs(),
        "reduction mean(dim=0)": points.mean(dim=0),      # the centroid (x, y)
        "reduction std(dim=0)": points.std(dim=0),
        "reduction norm(dim=1)": points.norm(dim=1),      # distance of each point from the origin
        "comparison points > 2": points > 2,              # a bool mask of the same shape
        "comparison max(dim=0)": points.max(dim=0).values,
        "comparison equal(points, points)": torch.equal(points, points.clone()),
        "indexing points[points[:, 1] > 1]": points[points[:, 1] > 1],  # rows picked by a mask
        "joining cat(dim=0)": torch.cat([points, points]),  # (6, 2)
        "BLAS points @ points.T": points @ points.T,      # (3, 3) dot products
        "other trace(points @ points.T)": torch.trace(points @ points.T),
    }


def show(value, decimals=4):
    """A tensor as a short nested list, floats rounded for printing."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        value = value.double().round(decimals=decimals)  # float64: prints 3.6667, not 3.6666998
    return value.tolist()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    lv = list_vs_tensor()
    print(f"list after a[2] = 3.0:   {lv['list']}")
    print(f"torch.ones(3), a[2]=2:   {lv['a']}   float(a[1]) = {lv['a1']}")
    print(f"flat points (6,):        {points_1d()}")
    points = book_points()
    print(f"points {tuple(points.shape)}:\n{points}")
    for expr, value in indexing(points).items():
        shape = tuple(value.shape)
        print(f"  {expr:<14} shape {str(shape):<10} {show(value)}")
    print(f"float(points[0, 1]) = {float(points[0, 1])}")
    a_shape, a_t_shape = transpose_shapes()
    print(f"transpose: {tuple(a_shape)} -> {tuple(a_t_shape)}")
    print("API tour on points:")
    tour = api_tour(points)
    for name, value in tour.items():
        print(f"  {name:<36} {show(value)}")
    return {"points": points, "indexing": indexing(points), "tour": tour}


if __name__ == "__main__":
    run_cli(main)
