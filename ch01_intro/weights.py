"""Chapter 2: where pretrained weights come from, shared by classify_resnet.py and horse2zebra.py.

`--weights FILE` names a state_dict; without it the registry's file under the data root is used
(`python -m common.data download resnet101` / `horse2zebra` put it there); `--random-weights`
runs the network untrained, to try the plumbing without any download.
"""
from pathlib import Path

import torch

from common.data import book_file
from common.errors import DataError

RESNET101_PTH = "weights/resnet101-63fe2227.pth"   # torchvision's IMAGENET1K_V1 file name
HORSE2ZEBRA_PTH = "p1ch2/horse2zebra_0.4.0.pth"   # the book's CycleGAN generator


def add_weights_arguments(parser, relpath, name):
    """`--weights FILE` and `--random-weights`, with the download command in the help."""
    parser.add_argument("--weights", default=None,
                        help=f"state_dict file (default: {relpath} in the data root; "
                             f"get it with: python -m common.data download {name})")
    parser.add_argument("--random-weights", action="store_true",
                        help="skip the download and run with untrained weights (outputs "
                             "are meaningless)")


def resolve_weights(weights, random_weights, relpath, name, data_dir=None):
    """Path of the weights to load, or None for --random-weights; DataError names the download."""
    if random_weights:
        return None
    if weights:
        path = Path(weights).expanduser()
        if not path.exists():
            raise DataError(f"{path} not found; get the weights with:  "
                            f"python -m common.data download {name}  "
                            f"(or pass --random-weights to run untrained)")
        return path
    try:
        return book_file(relpath, data_dir, name=name)
    except DataError as e:
        raise DataError(f"{e}  (or pass --random-weights to run untrained)") from None


def load_weights(model, path):
    """Strictly load a state_dict file into `model`; a wrong file is a one-line DataError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # any unreadable file becomes one line for the user
        raise DataError(f"{path}: cannot read the weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[:2])
        name = type(model).__name__
        raise DataError(f"{path}: the weights do not fit {name} ({detail})") from None
    return model
