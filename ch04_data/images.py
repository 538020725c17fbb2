"""Chapter 4.1: images as tensors, the dog photo and a batch of cats.  python ch04_data/images.py

Reads bobby.jpg (720 x 1280 RGB) and moves its channels first, then fills a preallocated
uint8 batch (3, 3, 256, 256) from the cat PNGs (keeping only RGB if a file has alpha), scales
it to [0, 1] and standardizes each channel. Writes runs/ch04/images.png in the repository (the
dog and cats).
"""
import argparse
from pathlib import Path

import imageio.v2 as imageio  # the book's imageio.imread (v2 API, without the v3 warning)
import numpy as np
import torch

from common.data import add_data_dir_argument, book_file
from common.errors import DataError, one_line, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

DOG_JPG = "p1ch4/image-dog/bobby.jpg"
CATS_DIR = "p1ch4/image-cats"
SIDE = 256


def read_image(path):
    """(H, W, C) uint8 tensor from an RGB(A) image file; anything else is a DataError."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not an image")
    try:
        img = np.asarray(imageio.imread(path))
    except Exception as e:          # each imageio plugin fails its own way on a non-image
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {one_line(e, 80)})"
                        ) from None
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit RGB(A) image, got {img.shape} {img.dtype}")
    return torch.from_numpy(img)


def load_batch(paths, side=SIDE):
    """Preallocated (N, 3, side, side) uint8 batch: channels first, alpha dropped."""
    batch = torch.zeros(len(paths), 3, side, side, dtype=torch.uint8)
    for i, path in enumerate(paths):
        img = read_image(path)
        if img.ndim != 3 or img.shape[:2] != (side, side) or img.shape[2] < 3:
            raise DataError(f"{path}: expected a {side}x{side} RGB(A) image, "
                            f"got {tuple(img.shape)}")
        batch[i] = img.permute(2, 0, 1)[:3]      # (C, H, W), RGB only
    return batch


def normalize(batch):
    """uint8 -> float in [0, 1], then each channel to mean 0, std 1 over the whole batch."""
    batch = batch.float() / 255.0
    mean = batch.mean(dim=(0, 2, 3), keepdim=True)   # (1, 3, 1, 1): one number per channel
    std = batch.std(dim=(0, 2, 3), keepdim=True)
    return (batch - mean) / std


def plot_images(dog, cats, out_dir):
    """The dog above the row of cats, as loaded (channels-first tensors back to H, W, C)."""
    fig = new_figure(figsize=(9, 8))
    grid = fig.add_gridspec(2, len(cats), height_ratios=(2, 1))
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(dog.permute(1, 2, 0).numpy())
    ax.set_title(f"bobby.jpg, tensor {tuple(dog.shape)} (C, H, W)")
    ax.axis("off")
    for i, cat in enumerate(cats):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(cat.permute(1, 2, 0).numpy())
        ax.set_title(f"batch[{i}]")
        ax.axis("off")
    return save_figure(fig, out_dir / "images.png", dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--out", default=str(runs_dir("ch04")),
                   help="folder for images.png (default: %(default)s)")
    args = p.parse_args(argv)

    dog_path = book_file(DOG_JPG, args.data_dir, name="image-dog")
    cats_dir = book_file(CATS_DIR, args.data_dir, name="image-cats")
    out = check_writable(args.out, "--out")             # made by the first write, not before
    img = read_image(dog_path)
    dog = img.permute(2, 0, 1)                   # a view: (720, 1280, 3) -> (3, 720, 1280)
    print(f"dog {tuple(img.shape)} {img.dtype} -> permute(2, 0, 1) {tuple(dog.shape)}")

    if not cats_dir.is_dir():
        raise DataError(f"{cats_dir}: a file, not the folder of cat images")
    paths = sorted(cats_dir.glob("*.png"))
    if not paths:
        raise DataError(f"{cats_dir}: no .png files; get them with:  "
                        f"python -m common.data download image-cats")
    batch = load_batch(paths)
    print(f"cat batch {tuple(batch.shape)} {batch.dtype} from {[p.name for p in paths]}")
    normalized = normalize(batch)
    for c in range(normalized.shape[1]):
        print(f"channel {c}: mean {normalized[:, c].mean():+.4f}, std {normalized[:, c].std():.4f}")

    png = plot_images(dog, batch, out)
    print(f"wrote {png}")
    return {"img": img, "dog": dog, "batch": batch, "normalized": normalized, "png": png}


if __name__ == "__main__":
    run_cli(main)
