import torch

from ch03_tensors import tensors_basics as tb


def test_list_and_tensor_mutation():
    out = tb.list_vs_tensor()
    assert out["list"] == [1.0, 2.0, 3.0]
    assert out["a"].tolist() == [1.0, 1.0, 2.0]
    assert out["a1"] == 1.0


def test_flat_points_keep_x_at_even_indices():
    points = tb.points_1d()
    assert points.shape == (6,)
    assert points[0::2].tolist() == [4.0, 5.0, 2.0]  # x
    assert points[1::2].tolist() == [1.0, 3.0, 1.0]  # y


def test_book_points_shapes_and_indexing():
    points = tb.book_points()
    assert points.shape == (3, 2) and points.dtype == torch.float32
    assert float(points[0, 1]) == 1.0
    idx = tb.indexing(points)
    assert idx["points[0, 1]"].dim() == 0
    assert idx["points[0]"].tolist() == [4.0, 1.0]
    assert idx["points[1:]"].shape == idx["points[1:, :]"].shape == (2, 2)
    assert idx["points[1:, 0]"].tolist() == [5.0, 2.0]
    assert idx["points[None]"].shape == (1, 3, 2)
    assert torch.equal(idx["points[None]"], points.unsqueeze(0))


def test_transpose_shapes():
    assert tb.transpose_shapes() == ((3, 2), (2, 3))


def test_api_tour_values():
    tour = tb.api_tour(tb.book_points())
    torch.testing.assert_close(tour["reduction mean(dim=0)"], torch.tensor([11 / 3, 5 / 3]))
    assert tour["comparison max(dim=0)"].tolist() == [5.0, 3.0]
    assert tour["comparison points > 2"].tolist() == [[True, False], [True, True], [False, False]]
    assert tour["indexing points[points[:, 1] > 1]"].tolist() == [[5.0, 3.0]]
    assert tour["joining cat(dim=0)"].shape == (6, 2)
    assert tour["other trace(points @ points.T)"].item() == 56.0  # 17 + 34 + 5


def test_main_runs(capsys):
    out = tb.main([])
    assert out["points"].shape == (3, 2)
    assert "(1, 3, 2)" in capsys.readouterr().out
