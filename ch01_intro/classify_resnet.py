"""Chapter 2: classify an image with a pretrained ResNet-101.

    python -m common.data download p1ch2 resnet101     # bobby.jpg, the labels, the weights
    python ch01_intro/classify_resnet.py                # top 5 for p1ch2/bobby.jpg
    python ch01_intro/classify_resnet.py --random-weights --image my.jpg   # no download

Preprocesses the image (preprocess.py), runs ResNet-101 (resnet.py) in eval mode and prints
the five most likely of the 1,000 ImageNet classes with their softmax percentage. With
torchvision's weights the book gets golden retriever 96.29% and Labrador retriever 2.81%.
"""
import argparse

import torch

from ch01_intro.preprocess import BOBBY_JPG, preprocess, read_image, read_text
from ch01_intro.resnet import resnet101
from ch01_intro.weights import (
    RESNET101_PTH,
    add_weights_arguments,
    load_weights,
    resolve_weights,
)
from common.data import add_data_dir_argument, book_file
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, run_cli

LABELS_TXT = "p1ch2/imagenet_classes.txt"


def load_labels(path, n_classes=1000, what="labels"):
    """The class names, one a line ("golden retriever", ...); as many as the model's classes."""
    labels = [line.strip() for line in read_text(path, what).splitlines() if line.strip()]
    if len(labels) != n_classes:
        raise DataError(f"{what} {path}: {len(labels)} labels, the model has {n_classes} "
                        "classes")
    return labels


def percentages(logits):
    """(N, C) logits -> (N, C) softmax probabilities in percent (each row sums to 100)."""
    return torch.softmax(logits, dim=1) * 100


def top_k(percent_row, labels, k=5):
    """The k best (label, percent) pairs of one image, highest first."""
    values, indices = torch.topk(percent_row, k)
    return [(labels[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def classify(model, batch, device="cpu"):
    """(N, 1000) logits of a preprocessed batch, in eval mode and without autograd."""
    model.eval()
    with torch.inference_mode():
        return model(batch.to(device)).float().cpu()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image", default=None, help=f"image file (default: {BOBBY_JPG})")
    p.add_argument("--labels", default=None, help=f"class names (default: {LABELS_TXT})")
    p.add_argument("--top", type=int, default=5, help="how many classes to print")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    add_weights_arguments(p, RESNET101_PTH, "resnet101")
    add_data_dir_argument(p)
    add_device_argument(p)
    args = p.parse_args(argv)
    if not 1 <= args.top <= 1000:
        raise DataError(f"--top {args.top}: must be between 1 and the 1000 ImageNet classes")

    weights = resolve_weights(args.weights, args.random_weights, RESNET101_PTH, "resnet101",
                              args.data_dir)
    image_path = args.image or book_file(BOBBY_JPG, args.data_dir, name="p1ch2")
    labels = load_labels(args.labels or book_file(LABELS_TXT, args.data_dir, name="p1ch2"),
                         what="--labels" if args.labels else "labels")
    device = pick_device(args.device)
    batch = preprocess(read_image(image_path, "--image" if args.image else "image"))

    seed_everything(args.seed)
    model = resnet101()
    if weights is None:
        print("note: --random-weights: an untrained ResNet-101, the labels below mean nothing")
    else:
        load_weights(model, weights, "--weights" if args.weights else "ResNet-101 weights")
    model.to(device)

    logits = classify(model, batch, device)                     # (1, 1000)
    best = top_k(percentages(logits)[0], labels, args.top)
    print(f"{image_path} ({'random weights' if weights is None else weights}):")
    for label, percent in best:
        print(f"  {percent:6.2f}%  {label}")
    return {"logits": logits, "top": best}


if __name__ == "__main__":
    run_cli(main)
