"""Chapter 4.1: the dog photo, a batch of cats, per-channel standardization."""
import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from ch04_data import images
from common.errors import DataError


def test_load_batch_drops_alpha_and_puts_channels_first(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (2, 8, 8, 4), dtype=np.uint8)
    paths = [tmp_path / f"img{i}.png" for i in range(2)]
    for path, arr in zip(paths, rgba, strict=True):
        imageio.imwrite(path, arr)
    batch = images.load_batch(paths, side=8)
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.uint8
    assert torch.equal(batch, torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2))


def test_load_batch_rejects_a_wrong_size(tmp_path):
    imageio.imwrite(tmp_path / "small.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="expected a 8x8 RGB"):
        images.load_batch([tmp_path / "small.png"], side=8)


def test_normalize_gives_zero_mean_unit_std_per_channel():
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    normalized = images.normalize(batch)
    assert normalized.dtype == torch.float32
    for c in range(3):
        assert abs(normalized[:, c].mean().item()) < 1e-5
        assert normalized[:, c].std().item() == pytest.approx(1, abs=1e-5)


@pytest.fixture(scope="module")
def result(book_root, tmp_path_factory):
    root = book_root(images.DOG_JPG, "image-dog")
    book_root(images.CATS_DIR, "image-cats")
    return images.main(["--data-dir", str(root), "--out", str(tmp_path_factory.mktemp("img"))])


@pytest.mark.realdata
def test_dog_shape_and_channels_first_view(result):
    assert result["img"].shape == (720, 1280, 3) and result["img"].dtype == torch.uint8
    assert result["dog"].shape == (3, 720, 1280)
    assert result["dog"].data_ptr() == result["img"].data_ptr()   # permute is a view
    assert torch.equal(result["dog"][:, 100, 200], result["img"][100, 200])


@pytest.mark.realdata
def test_cat_batch_and_normalization(result):
    assert result["batch"].shape == (3, 3, 256, 256) and result["batch"].dtype == torch.uint8
    normalized = result["normalized"]
    for c in range(3):
        assert abs(normalized[:, c].mean().item()) < 1e-5
        assert normalized[:, c].std().item() == pytest.approx(1, abs=1e-5)


@pytest.mark.realdata
def test_writes_the_png(result):
    assert result["png"].name == "images.png"
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
