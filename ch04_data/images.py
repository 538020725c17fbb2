"""Chapter 4.1: images as tensors, the dog photo and a batch of cats.  python ch04_data/images.py

Reads bobby.jpg (720 x 1280 RGB) and moves its channels first, then fills a preallocated
uint8 batch (3, 3, 256, 256) from the cat PNGs (keeping only RGB if a file has alpha), scales
it to [0, 1] and standardizes each channel. Writes runs/ch04/images.png (the dog and cats).
"""
import argparse
from pathlib import Path

import imageio.v2 as imageio  # the book's imageio.imread (v2 API, without the v3 warning)
import torch

from common.data import add_data_dir_argument, book_file
from common.errors import DataError, run_cli
from common.figures import save_figure

DOG_JPG = "p1ch4/image-dog/bobby.jpg"
CATS_DIR = "p1ch4/image-cats"
SIDE = 256


def read_image(path):
    """(H, W, C) uint8 tensor from an image file."""
    try:
        return torch.from_numpy(imageio.imread(path))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image ({e})") from None


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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 8))
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
    p.add_argument("--out", default="runs/ch04", help="folder for images.png")
    args = p.parse_args(argv)

    img = read_image(book_file(DOG_JPG, args.data_dir, name="image-dog"))
    dog = img.permute(2, 0, 1)                   # a view: (720, 1280, 3) -> (3, 720, 1280)
    print(f"dog {tuple(img.shape)} {img.dtype} -> permute(2, 0, 1) {tuple(dog.shape)}")

    cats_dir = book_file(CATS_DIR, args.data_dir, name="image-cats")
    paths = sorted(cats_dir.glob("*.png"))
    if not paths:
        raise DataError(f"{cats_dir}: no .png files; get them with:  "
                        f"python -m common.data download image-cats")
    batch = load_batch(paths)
    print(f"cat batch {tuple(batch.shape)} {batch.dtype} from {[p.name for p in paths]}")
    normalized = normalize(batch)
    for c in range(normalized.shape[1]):
        print(f"channel {c}: mean {normalized[:, c].mean():+.4f}, std {normalized[:, c].std():.4f}")

    png = plot_images(dog, batch, Path(args.out))
    print(f"wrote {png}")
    return {"img": img, "dog": dog, "batch": batch, "normalized": normalized, "png": png}


if __name__ == "__main__":
    run_cli(main)
