"""Chapter 7: a small synthetic CIFAR-10 in the real file format, for when CIFAR-10 is not here.

    python ch07_cifar/synthetic.py          # (re)writes data/synthetic/cifar-10-batches-py
    python ch07_cifar/synthetic.py --train-per-class 1000 --test-per-class 200

Each image is a smooth, noisy random background with one round patch of a class-specific texture
(stripes of some orientation and period, checks, dots) at a random place, with a random phase,
brightness sign and strength. The background carries a faint class-specific tint, so a fully
connected net learns something, but the texture, which can sit anywhere, is what a convnet's
translation invariance picks up: on CIFAR-2 the convnets of chapter 8 beat the chapter 7 nets.
The files are data_batch_1..5, test_batch and batches.meta, written with the same dict keys as
the real ones, so the same reader runs. Deterministic: the same sizes and seed give the same bytes.
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ch07_cifar.cifar_files import (
    BATCH_FILES,
    CIFAR_DIR,
    CLASS_NAMES,
    DOWNLOAD_COMMAND,
    META_FILE,
    TEST_BATCH,
    TRAIN_BATCHES,
    write_batch,
    write_meta,
)
from common.data import add_data_dir_argument, data_root
from common.errors import DataError, run_cli

SYNTHETIC_DIR = Path("synthetic") / CIFAR_DIR      # under the data root
PATCH = 14                 # the textured patch is a disc of radius 5..7 inside a 14x14 square
TINT = 14.0                # strength of the class tint of the background, grey levels (of 255)
CLASS_TINTS = np.array([   # RGB direction of each class's tint (airplane: a bluish sky)
    (-0.5, -0.1, 0.6), (0.3, -0.3, -0.2), (0.2, -0.5, 0.3), (0.5, 0.2, -0.4), (0.1, 0.5, -0.5),
    (0.6, -0.2, -0.1), (-0.3, 0.7, -0.3), (0.4, 0.3, 0.0), (-0.6, 0.2, 0.5), (0.0, -0.4, 0.2)])
BACKGROUND = 70.0          # amplitude of the smooth random background
NOISE = 22.0               # pixel noise std
CONTRAST = 40.0            # texture strength, +-30%


def texture(label, yy, xx):
    """Boolean texture of class `label` at integer coordinates yy, xx (phase included)."""
    patterns = (
        lambda: (yy // 2) % 2 == 0,                       # airplane: horizontal stripes, period 4
        lambda: (xx // 2) % 2 == 0,                       # automobile: vertical stripes
        lambda: ((yy + xx) // 2) % 2 == 0,                # bird: diagonal stripes
        lambda: ((yy - xx) // 2) % 2 == 0,                # cat: the other diagonal
        lambda: (yy // 2 + xx // 2) % 2 == 0,             # deer: 2x2 checks
        lambda: (yy % 3 == 0) & (xx % 3 == 0),            # dog: dots every 3 pixels
        lambda: (yy // 3) % 2 == 0,                       # frog: horizontal stripes, period 6
        lambda: (xx // 3) % 2 == 0,                       # horse: vertical stripes, period 6
        lambda: ((yy + xx) // 3) % 2 == 0,                # ship: diagonal stripes, period 6
        lambda: ((yy % 4) < 2) ^ ((xx % 6) < 3),          # truck: 4x6 checks
    )
    return patterns[label]()


def smooth_backgrounds(rng, n, tint):
    """(n, 3, 32, 32) float backgrounds: a random 5x5 grid of colours, bilinearly upsampled."""
    coarse = 128 + tint[:, :, None, None] + rng.uniform(-BACKGROUND, BACKGROUND, (n, 3, 5, 5))
    t = np.linspace(0, 4, 32)
    i0 = np.minimum(t.astype(int), 3)
    f = t - i0
    rows = coarse[:, :, i0, :] * (1 - f)[:, None] + coarse[:, :, i0 + 1, :] * f[:, None]
    return rows[..., i0] * (1 - f) + rows[..., i0 + 1] * f


def synthetic_images(labels, rng, class_tints):
    """uint8 (N, 3, 32, 32) images for the given labels."""
    n = len(labels)
    img = smooth_backgrounds(rng, n, class_tints[labels])
    img += rng.normal(0, NOISE, img.shape)
    yy, xx = np.mgrid[:PATCH, :PATCH]
    r = np.hypot(yy - (PATCH - 1) / 2, xx - (PATCH - 1) / 2)
    radius = rng.uniform(PATCH / 2 - 2, PATCH / 2, n)
    phase = rng.integers(0, 12, (n, 2))
    corner = rng.integers(0, 32 - PATCH + 1, (n, 2))
    strength = rng.choice([-1.0, 1.0], (n, 1)) * rng.uniform(0.7, 1.3, (n, 3)) * CONTRAST
    for k in range(n):
        mask = texture(labels[k], yy + phase[k, 0], xx + phase[k, 1]) & (r < radius[k])
        y, x = corner[k]
        img[k, :, y:y + PATCH, x:x + PATCH][:, mask] += strength[k][:, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _write_sample(folder, train_per_class, test_per_class, seed):
    """The seven CIFAR-10 files of the sample, written into `folder`."""
    class_tints = TINT * CLASS_TINTS
    n_classes = len(CLASS_NAMES)
    for split, per_class in ((0, train_per_class), (1, test_per_class)):
        rng = np.random.default_rng([seed, split])
        labels = rng.permutation(np.repeat(np.arange(n_classes), per_class))
        images = synthetic_images(labels, rng, class_tints)
        files = TRAIN_BATCHES if split == 0 else (TEST_BATCH,)
        for b, (idx, name) in enumerate(zip(np.array_split(np.arange(len(labels)), len(files)),
                                            files, strict=True)):
            batch_label = (f"training batch {b + 1} of {len(files)}" if split == 0
                           else "testing batch 1 of 1")
            filenames = [f"synthetic_{CLASS_NAMES[labels[i]]}_{split}_{i:06d}.png" for i in idx]
            write_batch(folder / name, images[idx], labels[idx], batch_label, filenames)
    write_meta(folder / META_FILE, num_cases_per_batch=int(np.ceil(n_classes * train_per_class
                                                                     / len(TRAIN_BATCHES))))


def write_synthetic_cifar(out_dir, train_per_class=500, test_per_class=100, seed=0):
    """Write the sample into out_dir (replacing it) and return out_dir.

    The files go to a staging folder renamed onto out_dir when complete, and removed on any
    failure: a half-written sample is never found, nor left behind."""
    if train_per_class < 1 or test_per_class < 1:
        raise DataError("the synthetic sample needs at least one image per class and split")
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.writing-{os.getpid()}")
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        _write_sample(staging, train_per_class, test_per_class, seed)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except OSError as e:            # a read-only or full data root, a file in the way
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"cannot write the synthetic sample to {out_dir} "
                        f"({e.strerror or e}); pass --data-dir with a writable folder") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def is_complete(cifar_dir):
    """True when every CIFAR-10 file is in the folder."""
    return all((Path(cifar_dir) / name).is_file() for name in BATCH_FILES)


def choose_cifar_dir(data_dir=None, synthetic=False, **sizes):
    """(folder, is_synthetic): the real cifar-10-batches-py when present and not `synthetic`,
    else the synthetic sample (written on first use, with `sizes` for write_synthetic_cifar),
    announced on stderr with the download command."""
    root = data_root(data_dir)
    real = root / CIFAR_DIR
    if real.is_dir() and not synthetic:
        return real, False                          # the reader names any file missing there
    out = root / SYNTHETIC_DIR
    if not is_complete(out):
        write_synthetic_cifar(out, **sizes)
    why = "--synthetic was given" if synthetic else f"CIFAR-10 was not found in {real}"
    bar = "=" * 78
    print(f"{bar}\nSYNTHETIC DATA: {why},\nso this run uses the built-in synthetic sample in {out}"
          f"\n(textures on noisy backgrounds; the numbers will not match the book's).\n"
          f"Get the real CIFAR-10 with:  {DOWNLOAD_COMMAND}\n{bar}", file=sys.stderr)
    return out, True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = write_synthetic_cifar(data_root(args.data_dir) / SYNTHETIC_DIR, args.train_per_class,
                                args.test_per_class, args.seed)
    print(f"wrote {10 * args.train_per_class} training and {10 * args.test_per_class} test images"
          f" in CIFAR-10 format to {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
