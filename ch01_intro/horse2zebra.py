"""Chapter 2: turn a horse into a zebra with the book's CycleGAN generator.

    python -m common.data download p1ch2 horse2zebra    # horse.jpg and horse2zebra_0.4.0.pth
    python ch01_intro/horse2zebra.py                     # writes runs/ch01/zebra.jpg
    python ch01_intro/horse2zebra.py --random-weights --image my.jpg --out runs/ch01/noise.png

Resizes the shorter side to 256 (the book's `Resize(256)`), scales to [0, 1], runs
`ResNetGenerator` (cyclegan.py) and writes `(out + 1) / 2` as an 8-bit image (JPEG or PNG,
from the --out suffix). Departure from the book: the longer side is cropped to a multiple of 4
(at most 3 pixels), so the two stride-2 downsamplings and upsamplings give back the input size.
"""
import argparse
from pathlib import Path

import imageio.v3 as iio
import torch

from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.preprocess import read_image, resize_shorter, to_chw
from ch01_intro.weights import (
    HORSE2ZEBRA_PTH,
    add_weights_arguments,
    load_weights,
    resolve_weights,
)
from common.data import add_data_dir_argument, book_file
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, run_cli
from common.files import atomic_path, output_dir, runs_dir

HORSE_JPG = "p1ch2/horse.jpg"


def prepare(image, size=256):
    """(H, W, 3) uint8 -> (1, 3, h, w) in [0, 1]: shorter side `size`, h and w multiples of 4."""
    chw = resize_shorter(to_chw(image), size) / 255.0
    h, w = chw.shape[-2:]
    top, left = (h % 4) // 2, (w % 4) // 2
    return chw[:, top:top + h - h % 4, left:left + w - w % 4].unsqueeze(0)


def generate(model, batch, device="cpu"):
    """Generator output in [-1, 1], eval mode, no autograd."""
    model.eval()
    with torch.inference_mode():
        return model(batch.to(device)).float().cpu()


def to_image(out):
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8, through the book's (out + 1) / 2."""
    rgb01 = ((out[0] + 1) / 2).clamp(0, 1)
    return (rgb01 * 255).round().byte().permute(1, 2, 0).numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image", default=None, help=f"input image (default: {HORSE_JPG})")
    p.add_argument("--out", default=str(runs_dir("ch01") / "zebra.jpg"),
                   help="output image, .jpg or .png (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="shorter side before the generator")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    add_weights_arguments(p, HORSE2ZEBRA_PTH, "horse2zebra")
    add_data_dir_argument(p)
    add_device_argument(p)
    args = p.parse_args(argv)

    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        raise DataError(f"--out {out_path}: use a .jpg or .png file name")
    if args.size < 4:
        raise DataError(f"--size {args.size}: must be at least 4 pixels")
    output_dir(out_path.parent, "--out folder")            # checked before any work
    weights = resolve_weights(args.weights, args.random_weights, HORSE2ZEBRA_PTH, "horse2zebra",
                              args.data_dir)
    image_path = args.image or book_file(HORSE_JPG, args.data_dir, name="p1ch2")
    device = pick_device(args.device)
    batch = prepare(read_image(image_path, "--image" if args.image else "image"), args.size)

    seed_everything(args.seed)
    model = ResNetGenerator()
    if weights is None:
        print("note: --random-weights: an untrained generator, expect coloured noise, not zebras")
    else:
        load_weights(model, weights, "--weights" if args.weights else "CycleGAN weights")
    model.to(device)

    out = generate(model, batch, device)          # (1, 3, 256, W) -> same shape, in [-1, 1]
    with atomic_path(out_path, "--out") as tmp:   # the suffix picks JPEG or PNG
        iio.imwrite(tmp, to_image(out))
    print(f"{image_path} -> {tuple(batch.shape)} -> {out_path} "
          f"(output range [{out.min():.3f}, {out.max():.3f}])")
    return {"input": batch, "output": out, "path": out_path}


if __name__ == "__main__":
    run_cli(main)
