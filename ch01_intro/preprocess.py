"""Chapter 2: ImageNet preprocessing without torchvision.  python ch01_intro/preprocess.py

The book builds `transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(...)])`.
The same steps in plain torch: shorter side to 256 (bilinear, antialiased, as PIL resizes),
center crop 224 x 224, HWC uint8 -> CHW float in [0, 1], per-channel normalization with the
ImageNet statistics, and a batch dimension. Prints the shapes for bobby.jpg (720 x 1280).
"""
import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from common.data import add_data_dir_argument, book_file
from common.errors import DataError, run_cli

BOBBY_JPG = "p1ch2/bobby.jpg"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_file(path, what):
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path}: a folder, not a file")
    if not path.is_file():
        raise DataError(f"{what} {path}: no such file")
    return path


def read_text(path, what="file"):
    """The whole UTF-8 text of a file; a DataError names `what` and the path otherwise."""
    path = _check_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{what} {path}: cannot read ({e.strerror or e})") from None


def read_image(path, what="image"):
    """(H, W, 3) uint8 array from an image file; grey images get 3 channels, alpha is dropped."""
    path = _check_file(path, what)
    try:
        image = np.asarray(iio.imread(path))
    except Exception as e:          # each imageio plugin fails its own way (OSError, ...)
        raise DataError(f"{what} {path}: not a readable image ({type(e).__name__})") from None
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
        raise DataError(f"{what} {path}: expected an 8-bit RGB image, got {image.shape} "
                        f"{image.dtype}")
    return image[..., :3]


def to_chw(image):
    """(H, W, 3) uint8 array -> (3, H, W) float32 tensor, still in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


def resize_shorter(chw, size=256):
    """Scale (3, H, W) so the shorter side is `size`, keeping the aspect ratio (torchvision's rule).

    Bilinear with antialiasing, as PIL resizes the book's images; values are rounded back to
    whole 0..255 levels, since PIL hands an 8-bit image to ToTensor.
    """
    h, w = chw.shape[-2:]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    resized = F.interpolate(chw.unsqueeze(0), size=(new_h, new_w), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return resized.round().clamp(0, 255)


def center_crop(chw, size=224):
    """The central size x size window of (C, H, W) (torchvision rounds the offsets)."""
    h, w = chw.shape[-2:]
    if h < size or w < size:
        raise DataError(f"image {h}x{w} is smaller than the {size}x{size} crop")
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return chw[..., top:top + size, left:left + size]


def normalize(chw01, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Per-channel (x - mean) / std for a (3, H, W) tensor in [0, 1]."""
    mean = torch.tensor(mean, dtype=chw01.dtype).view(3, 1, 1)
    std = torch.tensor(std, dtype=chw01.dtype).view(3, 1, 1)
    return (chw01 - mean) / std


def preprocess(image, resize=256, crop=224):
    """(H, W, 3) uint8 image -> (1, 3, crop, crop) float32 batch, normalized for ImageNet models."""
    chw = center_crop(resize_shorter(to_chw(image), resize), crop)
    return normalize(chw / 255.0).unsqueeze(0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image", default=None, help=f"image file (default: {BOBBY_JPG})")
    add_data_dir_argument(p)
    args = p.parse_args(argv)
    path = args.image or book_file(BOBBY_JPG, args.data_dir, name="p1ch2")
    image = read_image(path)
    batch = preprocess(image)
    print(f"{path}: {image.shape[0]}x{image.shape[1]} pixels -> batch {tuple(batch.shape)} "
          f"{batch.dtype}")
    for c, name in enumerate("RGB"):
        print(f"  {name}: mean {batch[0, c].mean():+.3f}  std {batch[0, c].std():.3f}")
    return batch


if __name__ == "__main__":
    run_cli(main)
