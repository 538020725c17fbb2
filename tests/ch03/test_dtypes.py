import torch

from ch03_tensors import dtypes


def test_element_sizes():
    sizes = dtypes.element_sizes()
    assert sizes["torch.float32 / torch.float"] == 4
    assert sizes["torch.float64 / torch.double"] == 8
    assert sizes["torch.float16 / torch.half"] == 2
    assert sizes["torch.int16 / torch.short"] == 2
    assert sizes["torch.int64 / torch.long"] == 8
    assert sizes["torch.bool"] == sizes["torch.uint8"] == sizes["torch.int8"] == 1


def test_defaults():
    d = dtypes.defaults()
    assert d["torch.tensor([[4.0, 1.0], ...])"] == d["torch.ones(3)"] == torch.float32
    assert d["torch.tensor([1, 2])"] == d["points.argmax(dim=0) (indices)"] == torch.int64
    assert d["points > 2 (mask)"] == torch.bool


def test_conversions():
    for expr, t in dtypes.conversions().items():
        expected = torch.float64 if "double" in expr else torch.int16
        assert t.dtype == expected, expr


def test_float64_times_int16_is_float64():
    points_64, points_short, product = dtypes.mixed_types()
    assert points_short.dtype == torch.int16 and product.dtype == torch.float64
    assert torch.equal(points_short, points_64.trunc().short())
    torch.testing.assert_close(product, points_64 * points_short.double())


def test_mask_selects_rows():
    mask, picked = dtypes.masked_select()
    assert mask.dtype == torch.bool and mask.tolist() == [True, True, False]
    assert picked.tolist() == [[4.0, 1.0], [5.0, 3.0]]


def test_sqrt_of_int_promotes_but_in_place_fails():
    out, error = dtypes.sqrt_of_integers()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[4], torch.tensor(2.0))
    assert error is not None and "Long" in error


def test_main_runs(capsys):
    dtypes.main([])
    assert "float64 * int16 -> torch.float64" in capsys.readouterr().out
