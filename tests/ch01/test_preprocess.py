"""ImageNet preprocessing without torchvision: sizes, crop, normalization, agreement with PIL."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from ch01_intro import preprocess as pp
from common.errors import DataError
from tests.ch01.conftest import write_image


def test_preprocess_gives_one_normalized_224_batch():
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    batch = pp.preprocess(image)
    assert batch.shape == (1, 3, 224, 224)
    assert batch.dtype == torch.float32


def test_a_constant_mean_image_normalizes_to_zero():
    mean_rgb = np.round(np.array(pp.IMAGENET_MEAN) * 255).astype(np.uint8)
    image = np.broadcast_to(mean_rgb, (256, 320, 3)).copy()
    batch = pp.preprocess(image)
    # Only the rounding to 8-bit levels is left: |error| <= 0.5 / 255 / std
    assert batch.abs().max() < 0.5 / 255 / min(pp.IMAGENET_STD) + 1e-6


def test_normalize_uses_the_imagenet_statistics():
    ones = torch.ones(3, 2, 2)
    expected = (1 - torch.tensor(pp.IMAGENET_MEAN)) / torch.tensor(pp.IMAGENET_STD)
    torch.testing.assert_close(pp.normalize(ones)[:, 0, 0], expected)


@pytest.mark.parametrize("hw, expected", [((720, 1280), (256, 455)), ((1280, 720), (455, 256)),
                                          ((300, 300), (256, 256))])
def test_resize_shorter_keeps_the_aspect_ratio(hw, expected):
    chw = torch.rand(3, *hw) * 255
    assert pp.resize_shorter(chw, 256).shape == (3, *expected)


def test_resize_matches_pil_bilinear_within_one_level():  # PIL did the book's Resize
    image = np.random.default_rng(1).integers(0, 256, (180, 320, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((455, 256), Image.BILINEAR))
    ours = pp.resize_shorter(pp.to_chw(image), 256).permute(1, 2, 0).numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected.astype(np.float32)).max() <= 1


def test_center_crop_takes_the_middle():
    chw = torch.arange(10 * 12, dtype=torch.float32).view(1, 10, 12)
    crop = pp.center_crop(chw, 4)
    assert crop.shape == (1, 4, 4)
    assert crop[0, 0, 0] == chw[0, 3, 4]
    with pytest.raises(DataError):
        pp.center_crop(chw, 11)


def test_read_image_gives_rgb_for_grey_and_rgba(tmp_path):
    grey, rgba = tmp_path / "grey.png", tmp_path / "rgba.png"
    iio.imwrite(grey, np.full((5, 6), 7, dtype=np.uint8))
    iio.imwrite(rgba, np.full((5, 6, 4), 9, dtype=np.uint8))
    assert pp.read_image(grey).shape == (5, 6, 3)
    assert pp.read_image(rgba).shape == (5, 6, 3)
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(DataError):
        pp.read_image(tmp_path / "bad.jpg")


def test_main_on_a_generated_image(tmp_path, capsys):
    write_image(tmp_path / "x.png", 240, 320)
    batch = pp.main(["--image", str(tmp_path / "x.png")])
    assert batch.shape == (1, 3, 224, 224)
    assert "240x320" in capsys.readouterr().out


@pytest.mark.realdata
def test_bobby_is_720_by_1280_and_preprocesses(book_data):
    image = pp.read_image(book_data / pp.BOBBY_JPG)
    assert image.shape == (720, 1280, 3)
    batch = pp.main(["--data-dir", str(book_data)])
    assert batch.shape == (1, 3, 224, 224)
