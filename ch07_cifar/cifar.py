"""Chapter 7: CIFAR-10 without torchvision: the Dataset, to_tensor, normalize, CIFAR-2.

    python ch07_cifar/cifar.py               # real CIFAR-10 when downloaded, else synthetic
    python ch07_cifar/cifar.py --synthetic   # force the built-in synthetic sample
    python -m common.data download cifar10   # 170 MB -> <data root>/cifar-10-batches-py

Prints the dataset sizes, one sample, the per-channel mean/std and the CIFAR-2 counts, and writes
runs/ch07/cifar_samples.png in the repository (one row of images per class). The files themselves
are read by cifar_files.py; the synthetic stand-in comes from synthetic.py.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ch07_cifar.cifar_files import (
    CLASS_NAMES,
    META_FILE,
    TEST_BATCH,
    TRAIN_BATCHES,
    read_batch,
    read_meta,
)
from ch07_cifar.synthetic import choose_cifar_dir
from common.data import add_data_dir_argument
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

# The book's per-channel statistics of the 50,000 training images, after to_tensor.
BOOK_MEAN = (0.4915, 0.4823, 0.4468)
BOOK_STD = (0.2470, 0.2435, 0.2616)
# CIFAR-2: airplane (0) and bird (2), relabelled 0 and 1.
LABEL_MAP = {0: 0, 2: 1}
CIFAR2_CLASS_NAMES = ("airplane", "bird")
SHOWN_ITEM = 99                                    # the training image the book prints


class CifarDataset(Dataset):
    """CIFAR images and labels; an item is (HWC uint8 image, or transform(image), label)."""

    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i].transpose(1, 2, 0)  # (32, 32, 3) uint8, like the PIL image of the book
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def load_cifar10(cifar_dir, train=True, transform=None):
    """The 50,000 training (5 batches) or 10,000 test images of a cifar-10-batches-py folder."""
    cifar_dir = Path(cifar_dir)
    names = read_meta(cifar_dir / META_FILE)
    if names != list(CLASS_NAMES):
        raise DataError(f"{cifar_dir / META_FILE}: class names {names} are not CIFAR-10's")
    batches = [read_batch(cifar_dir / name) for name in (TRAIN_BATCHES if train else (TEST_BATCH,))]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    if not len(images):
        raise DataError(f"{cifar_dir}: the {'training' if train else 'test'} batches hold no "
                        "images")
    return CifarDataset(images, labels, transform)


def to_tensor(img):
    """HWC uint8 image -> CHW float32 tensor in [0, 1] (torchvision's ToTensor)."""
    return torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div(255)


def normalize(t, mean, std):
    """Per-channel (t - mean) / std of a CHW (or NCHW) tensor (torchvision's Normalize)."""
    mean = torch.as_tensor(mean, dtype=t.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=t.dtype).view(-1, 1, 1)
    return (t - mean) / std


def compose(*transforms):
    """Apply the functions left to right (torchvision's Compose)."""
    def apply(x):
        for transform in transforms:
            x = transform(x)
        return x
    return apply


def channel_mean_std(dataset, chunk=5000):
    """Per-channel mean and std of to_tensor(image) over a CifarDataset, as two tuples of floats.

    The book stacks every image into one (3, 32, 32, 50000) tensor and calls
    view(3, -1).mean(dim=1) / .std(dim=1); summing in float64 by chunks gives the same numbers
    without holding 600 MB of floats.
    """
    n, total, total_sq = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(dataset.images), chunk):
        x = torch.from_numpy(dataset.images[start:start + chunk]).double().div(255)
        x = x.transpose(0, 1).reshape(3, -1)
        n += x.shape[1]
        total += x.sum(dim=1)
        total_sq += (x * x).sum(dim=1)
    mean = total / n
    var = (total_sq - n * mean * mean) / (n - 1)   # unbiased, like torch.std
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())


def cifar2(dataset):
    """The airplane and bird items of a CifarDataset, labels remapped {0: 0, 2: 1}, as a list."""
    return [(dataset[i][0], LABEL_MAP[int(label)])
            for i, label in enumerate(dataset.labels) if int(label) in LABEL_MAP]


def load_cifar2(cifar_dir):
    """CIFAR-2 train and validation lists of (normalized (3, 32, 32) tensor, 0 or 1), plus stats.

    Normalized with the mean/std of the whole CIFAR-10 training set, as in the book.
    """
    train10 = load_cifar10(cifar_dir, train=True)
    mean, std = channel_mean_std(train10)
    transform = compose(to_tensor, lambda t: normalize(t, mean, std))
    train10.transform = transform
    val10 = load_cifar10(cifar_dir, train=False, transform=transform)
    train2, val2 = cifar2(train10), cifar2(val10)
    for split, items, full in (("training", train2, train10), ("test", val2, val10)):
        if not items:
            raise DataError(f"{cifar_dir}: no airplane or bird among the {len(full)} {split} "
                            "images: CIFAR-2 would be empty")
    return train2, val2, {"mean": mean, "std": std}


def plot_samples(dataset, path, per_class=8):
    """A grid: one row of images per class; returns the path of the PNG."""
    fig = new_figure(figsize=(per_class * 0.9, len(CLASS_NAMES) * 0.95))
    axes = fig.subplots(len(CLASS_NAMES), per_class)
    for c, name in enumerate(CLASS_NAMES):
        indices = np.flatnonzero(dataset.labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(indices):
                ax.imshow(dataset[indices[j]][0])
        axes[c, 0].set_title(name, fontsize=8, loc="left")
    return save_figure(fig, path, dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true", help="use the built-in synthetic sample")
    p.add_argument("--out", default=str(runs_dir("ch07")),
                   help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    out = check_writable(args.out, "--out")      # made by the first write, not before

    cifar_dir, synthetic = choose_cifar_dir(args.data_dir, args.synthetic)
    train10 = load_cifar10(cifar_dir, train=True)
    val10 = load_cifar10(cifar_dir, train=False)
    print(f"{cifar_dir}: {len(train10)} training images, {len(val10)} validation images")
    if len(train10) <= SHOWN_ITEM:
        raise DataError(f"{cifar_dir}: {len(train10)} training images; the book shows item "
                        f"{SHOWN_ITEM}, so at least {SHOWN_ITEM + 1} are needed")
    img, label = train10[SHOWN_ITEM]
    print(f"item {SHOWN_ITEM}: image {type(img).__name__} {img.shape} {img.dtype}, label {label}"
          f" ({CLASS_NAMES[label]})")
    img_t = to_tensor(img)
    print(f"to_tensor: {tuple(img_t.shape)} {img_t.dtype}, values in "
          f"[{img_t.min():.3f}, {img_t.max():.3f}]")
    mean, std = channel_mean_std(train10)
    print("per-channel mean", tuple(round(m, 4) for m in mean), " std",
          tuple(round(s, 4) for s in std), " (book:", BOOK_MEAN, BOOK_STD, ")")
    train2, val2 = cifar2(train10), cifar2(val10)
    print(f"CIFAR-2 (airplane=0, bird=1): {len(train2)} train, {len(val2)} val")
    png = plot_samples(train10, out / "cifar_samples.png")
    print(f"wrote {png}")
    return {"cifar_dir": cifar_dir, "synthetic": synthetic, "n_train": len(train10),
            "n_val": len(val10), "mean": mean, "std": std,
            "n_train2": len(train2), "n_val2": len(val2), "png": png}


if __name__ == "__main__":
    run_cli(main)
