import torch

from ch03_tensors import storage_views as sv
from ch03_tensors.tensors_basics import book_points


def test_storage_is_row_major_and_editable():
    points = book_points()
    assert sv.storage_view(points).tolist() == [4.0, 1.0, 5.0, 3.0, 2.0, 1.0]
    assert sv.edit_through_storage().tolist() == [[2.0, 1.0], [5.0, 3.0], [2.0, 1.0]]


def test_second_point_offset_size_stride():
    points, second = sv.second_point()
    assert sv.layout(points) == {"size": (3, 2), "offset": 0, "stride": (2, 1),
                                 "contiguous": True}
    assert sv.layout(second) == {"size": (2,), "offset": 2, "stride": (1,), "contiguous": True}
    assert second.data_ptr() == points.data_ptr() + 2 * points.element_size()
    assert sv.storage_ptr(second) == sv.storage_ptr(points)


def test_view_edits_source_clone_does_not():
    via_view, via_clone, copy = sv.edit_view_and_clone()
    assert via_view.tolist() == [[4.0, 1.0], [10.0, 3.0], [2.0, 1.0]]
    assert via_clone.tolist() == [[4.0, 1.0], [5.0, 3.0], [2.0, 1.0]]
    assert copy.tolist() == [10.0, 3.0]
    assert sv.storage_ptr(copy) != sv.storage_ptr(via_clone)


def test_transpose_2d_shares_storage():
    points, points_t = sv.transpose_2d()
    assert points_t.tolist() == [[4.0, 5.0, 2.0], [1.0, 3.0, 1.0]]
    assert points.stride() == (2, 1) and points_t.stride() == (1, 2)
    assert points_t.data_ptr() == points.data_ptr()
    points_t[0, 1] = -1.0                       # one storage: the edit shows in points[1, 0]
    assert points[1, 0].item() == -1.0


def test_transpose_3d_strides():
    some_t, transpose_t = sv.transpose_3d()
    assert some_t.shape == (3, 4, 5) and transpose_t.shape == (5, 4, 3)
    assert some_t.stride() == (20, 5, 1) and transpose_t.stride() == (1, 5, 20)
    assert transpose_t.data_ptr() == some_t.data_ptr()


def test_contiguous_reorders_into_new_storage():
    points_t, cont = sv.make_contiguous()
    assert not points_t.is_contiguous() and cont.is_contiguous()
    assert sv.storage_view(points_t).tolist() == [4.0, 1.0, 5.0, 3.0, 2.0, 1.0]
    assert sv.storage_view(cont).tolist() == [4.0, 5.0, 2.0, 1.0, 3.0, 1.0]
    assert cont.stride() == (3, 1)
    assert torch.equal(cont, points_t)
    assert sv.storage_ptr(cont) != sv.storage_ptr(points_t)
    assert book_points().contiguous().data_ptr() != cont.data_ptr()
    p = book_points()
    assert p.contiguous() is p                   # already contiguous: no copy


def test_zero_in_place():
    a, same_object, same_storage = sv.zero_in_place()
    assert a.tolist() == [[0.0, 0.0]] * 3
    assert same_object and same_storage


def test_exercise_views():
    a, b, c = sv.exercise_views()
    assert sv.layout(a) == {"size": (9,), "offset": 0, "stride": (1,), "contiguous": True}
    assert sv.layout(b) == {"size": (3, 3), "offset": 0, "stride": (3, 1), "contiguous": True}
    assert sv.layout(c) == {"size": (2, 2), "offset": 4, "stride": (3, 1), "contiguous": False}
    assert sv.storage_ptr(b) == sv.storage_ptr(c) == sv.storage_ptr(a)
    assert c.tolist() == [[4, 5], [7, 8]]


def test_main_runs(capsys):
    sv.main([])
    assert "[4.0, 5.0, 2.0, 1.0, 3.0, 1.0]" in capsys.readouterr().out
