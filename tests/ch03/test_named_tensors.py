import warnings

import pytest
import torch

from ch03_tensors import named_tensors as nt


@pytest.fixture
def images():
    return nt.book_images(seed=0)


def test_einsum_equals_weighted_sum(images):
    img_t, batch_t, weights = images
    for t, shape in ((img_t, (5, 5)), (batch_t, (2, 5, 5))):
        einsum, weighted = nt.gray_einsum(t, weights), nt.gray_weighted(t, weights)
        assert einsum.shape == weighted.shape == shape
        torch.testing.assert_close(einsum, weighted)
        expected = sum(w * t[..., c, :, :] for c, w in enumerate(nt.GRAY_WEIGHTS))
        torch.testing.assert_close(einsum, expected)
    assert nt.gray_mean(img_t).shape == (5, 5) and nt.gray_mean(batch_t).shape == (2, 5, 5)


def test_gray_weighted_leaves_the_weights_alone(images):
    img_t, _, weights = images
    nt.gray_weighted(img_t, weights)             # unsqueeze_ acts on a view, not on `weights`
    assert weights.shape == (3,)


def test_names_kept_by_hand(images):
    img_t, batch_t, weights = images
    img_names = nt.refine_names(3, ..., *nt.CHW_NAMES)
    batch_names = nt.refine_names(4, ..., *nt.CHW_NAMES)
    assert img_names == ("channels", "rows", "columns")
    assert batch_names == (None, "channels", "rows", "columns")
    aligned, names = nt.align_by_name(weights, ("channels",), img_names)
    assert aligned.shape == (3, 1, 1) and names == img_names
    gray, gray_names = nt.gray_by_name(img_t, img_names, weights)
    assert gray_names == ("rows", "columns")
    torch.testing.assert_close(gray, nt.gray_einsum(img_t, weights))
    batch_gray, batch_gray_names = nt.gray_by_name(batch_t, batch_names, weights)
    assert batch_gray_names == (None, "rows", "columns")
    torch.testing.assert_close(batch_gray, nt.gray_einsum(batch_t, weights))


def test_names_kept_by_hand_align_a_permuted_tensor():
    t = torch.arange(6.0).reshape(2, 3)                        # ("columns", "channels")
    aligned, names = nt.align_by_name(t, ("columns", "channels"), nt.CHW_NAMES)
    assert aligned.shape == (3, 1, 2) and names == nt.CHW_NAMES
    assert torch.equal(aligned[:, 0, :], t.T)


def test_name_mismatch_raises(images):
    img_t, _, weights = images
    with pytest.raises(RuntimeError, match="dim 'columns' and dim 'channels'"):
        nt.mul_by_name(img_t[..., :3], nt.CHW_NAMES, weights, ("channels",))
    with pytest.raises(ValueError):
        nt.refine_names(2, *nt.CHW_NAMES)


@pytest.mark.skipif(not nt.has_named_tensors(), reason="this torch has no named tensors")
def test_torch_named_tensors_match(images):
    img_t, batch_t, weights = images
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # the prototype warning must stay silenced
        named = nt.named_walkthrough(img_t, batch_t, weights)
    assert named["img_names"] == nt.CHW_NAMES
    assert named["batch_names"] == (None, *nt.CHW_NAMES)
    assert named["aligned_shape"] == (3, 1, 1)
    assert named["gray_names"] == ("rows", "columns")
    assert named["plain_names"] == (None, None)
    assert named["mismatch"] is not None
    torch.testing.assert_close(named["gray"], nt.gray_einsum(img_t, weights))
    torch.testing.assert_close(named["batch_gray"], nt.gray_einsum(batch_t, weights))


@pytest.mark.skipif(nt.has_named_tensors(), reason="this torch still has named tensors")
def test_named_walkthrough_says_the_api_is_gone(images):
    with pytest.raises(RuntimeError, match="no named tensors"):
        nt.named_walkthrough(*images)


def test_main_runs(capsys):
    out = nt.main([])
    torch.testing.assert_close(out["einsum"], out["weighted"])
    torch.testing.assert_close(out["by_name"], out["einsum"])
    assert "RuntimeError" in capsys.readouterr().out
