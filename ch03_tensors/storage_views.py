"""Chapter 3: storage, offset, stride; views, clones, transposes and contiguity.

    python ch03_tensors/storage_views.py

A tensor is a view: a size, a storage offset and a stride over a flat storage. Indexing,
`t()` and `transpose` make new views of the same storage; `clone()` and `contiguous()` copy.
"""
import argparse

import torch

from ch03_tensors.tensors_basics import book_points
from common.errors import run_cli


def storage_view(t):
    """The whole storage of `t` as a flat tensor, in storage order, sharing its memory.

    The book prints `t.storage()`; that TypedStorage is deprecated (it warns), so this views
    `t.untyped_storage()` as `t.dtype` instead: same values, same memory.
    """
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage())


def storage_ptr(t):
    """Address of the start of `t`'s storage: equal for two tensors that share it."""
    return t.untyped_storage().data_ptr()


def layout(t):
    """Size, storage offset, stride and contiguity: everything a view adds to its storage."""
    return {"size": tuple(t.shape), "offset": t.storage_offset(), "stride": t.stride(),
            "contiguous": t.is_contiguous()}


def edit_through_storage():
    """Writing into the storage changes the tensor that views it: 4.0 -> 2.0 at points[0, 0]."""
    points = book_points()
    storage = storage_view(points)
    storage[0] = 2.0
    return points


def second_point():
    """`points[1]`: offset 2 elements into the same storage, size (2,), stride (1,)."""
    points = book_points()
    second = points[1]
    return points, second


def edit_view_and_clone():
    """Writing into `points[1]` changes `points`; writing into `points[1].clone()` does not."""
    via_view, via_clone = book_points(), book_points()
    view = via_view[1]
    view[0] = 10.0
    copy = via_clone[1].clone()
    copy[0] = 10.0
    return via_view, via_clone, copy


def transpose_2d():
    """`points.t()` swaps size and stride, (2, 1) -> (1, 2), and copies nothing."""
    points = book_points()
    return points, points.t()


def transpose_3d():
    """`ones(3, 4, 5).transpose(0, 2)`: shape (5, 4, 3), stride (20, 5, 1) -> (1, 5, 20)."""
    some_t = torch.ones(3, 4, 5)
    return some_t, some_t.transpose(0, 2)


def make_contiguous():
    """`points.t().contiguous()` copies into a new storage laid out row by row, stride (3, 1)."""
    points_t = book_points().t()
    return points_t, points_t.contiguous()


def zero_in_place():
    """`zero_()` (trailing underscore: in place) rewrites the storage and returns the tensor."""
    a = torch.ones(3, 2)
    before = storage_ptr(a)
    returned = a.zero_()
    return a, returned is a, storage_ptr(a) == before


def exercise_views():
    """The chapter's exercise: `a` = 0..8, `b = a.view(3, 3)`, `c = b[1:, 1:]`; all one storage."""
    a = torch.tensor(list(range(9)))
    b = a.view(3, 3)
    c = b[1:, 1:]
    return a, b, c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    points = book_points()
    print(f"points {tuple(points.shape)} storage: {storage_view(points).tolist()}")
    print(f"after storage[0] = 2.0: points[0] = {edit_through_storage()[0].tolist()}")

    points, second = second_point()
    print(f"points   {layout(points)}")
    print(f"points[1] {layout(second)}")
    print(f"  points[1].data_ptr() - points.data_ptr() = {second.data_ptr() - points.data_ptr()}"
          f" bytes = offset 2 x {points.element_size()} bytes")

    via_view, via_clone, copy = edit_view_and_clone()
    print(f"points[1][0] = 10 through a view:  points = {via_view.tolist()}")
    print(f"the same through clone():        points = {via_clone.tolist()}, clone = "
          f"{copy.tolist()}")

    points, points_t = transpose_2d()
    print(f"points.t() = {points_t.tolist()}: stride {points.stride()} -> {points_t.stride()}, "
          f"same storage: {storage_ptr(points) == storage_ptr(points_t)}")
    some_t, transpose_t = transpose_3d()
    print(f"ones(3, 4, 5).transpose(0, 2): shape {tuple(some_t.shape)} -> "
          f"{tuple(transpose_t.shape)}, stride {some_t.stride()} -> {transpose_t.stride()}")

    points_t, points_t_cont = make_contiguous()
    print(f"points.t() contiguous? {points_t.is_contiguous()}, storage "
          f"{storage_view(points_t).tolist()}, stride {points_t.stride()}")
    print(f".contiguous():   contiguous? {points_t_cont.is_contiguous()}, storage "
          f"{storage_view(points_t_cont).tolist()}, stride {points_t_cont.stride()}, "
          f"new storage: {storage_ptr(points_t_cont) != storage_ptr(points_t)}")

    a, same_object, same_storage = zero_in_place()
    print(f"ones(3, 2).zero_() -> {a.tolist()}; returns itself: {same_object}, "
          f"same storage: {same_storage}")

    a, b, c = exercise_views()
    print("exercise: a = tensor(list(range(9))), b = a.view(3, 3), c = b[1:, 1:]")
    for name, t in (("a", a), ("b", b), ("c", c)):
        print(f"  {name}: {layout(t)}  shares a's storage: {storage_ptr(t) == storage_ptr(a)}")
    return {"points": points, "points_t": points_t, "points_t_cont": points_t_cont,
            "exercise": (a, b, c)}


if __name__ == "__main__":
    run_cli(main)
