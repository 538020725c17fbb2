"""Chapter 2: where pretrained weights come from, shared by classify_resnet.py and horse2zebra.py.

`--weights FILE` names a state_dict; without it the registry's file under the data root is used
(`python -m common.data download resnet101` / `horse2zebra` put it there); `--random-weights`
runs the network untrained, to try the plumbing without any download.
"""
from pathlib import Path

import torch

from common.data import book_file
from common.errors import DataError, one_line
from common.files import read_torch

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


def _few(keys, shown=3):
    """'a, b, c and 9 more': the first few of a list of names, the rest counted."""
    keys = list(keys)
    head = ", ".join(keys[:shown])
    return head + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def state_mismatch(model, state):
    """What keeps `state` from loading strictly into `model`, in a few words ('' when it fits):
    the first missing, unexpected and reshaped keys, the rest counted (a ResNet's 626 keys
    would otherwise make a 13,000-character message)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape ({k}: {tuple(state[k].shape)} in the "
                     f"file, {tuple(own[k].shape)} in the model"
                     + (f"; and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ")"))
    return "; ".join(parts)


def load_state(model, state, where):
    """Strictly load the state_dict `state` into `model`; a DataError naming `where` (the file,
    and the flag it came from) says in one line why it does not fit."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                              for k, v in state.items()):
        raise DataError(f"{where}: not a state_dict (a dict of named tensors), found "
                        f"{type(state).__name__}")
    why = state_mismatch(model, state)
    if why:
        raise DataError(one_line(f"{where}: the weights do not fit {type(model).__name__}: "
                                 f"{why}"))
    model.load_state_dict(state)
    return model


def load_weights(model, path, what="weights"):
    """Strictly load a state_dict file into `model` (read without running code); a wrong file
    is a one-line DataError naming `what` and the path."""
    state = read_torch(path, what)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return load_state(model, state, f"{what} {path}")
