"""Fixtures for tests/ch01: the book's data folder, a CUDA device, small generated images."""
import imageio.v3 as iio
import numpy as np
import pytest

from common.data import REPO_ROOT, data_root


def _book_root():
    """The data root when it holds p1ch2/, else the shared copy next to the repository."""
    for root in (data_root(), REPO_ROOT.parent / "shared" / "dlwpt-data"):
        if (root / "p1ch2").is_dir():
            return root
    return None


@pytest.fixture(scope="session")
def book_data():
    """Root of the book's data files (p1ch2/...); skips when they are absent."""
    root = _book_root()
    if root is None:
        pytest.skip("the book's p1ch2/ files are absent: python -m common.data download p1ch2")
    return root


def write_image(path, height, width, seed=0):
    """A smooth random RGB image (gradients plus noise) written to `path`; returns the array."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], axis=-1)
    image = (image + rng.normal(0, 20, image.shape)).clip(0, 255).astype(np.uint8)
    iio.imwrite(path, image)
    return image


def write_labels(path, n=1000):
    """A stand-in for imagenet_classes.txt: `class 0` ... `class 999`."""
    path.write_text("\n".join(f"class {i}" for i in range(n)))
    return path
