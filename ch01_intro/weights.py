"""Chapter 2: where pretrained weights come from, shared by classify_resnet.py and horse2zebra.py.

`--weights FILE` names a state_dict; without it the registry's file under the data root is used
(`python -m common.data download resnet101` / `horse2zebra` put it there); `--random-weights`
runs the network untrained, to try the plumbing without any download.
"""
from pathlib import Path

import torch

from common.data import book_file
from common.errors import MAX_MESSAGE, DataError, one_line
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


SHOWN_KEYS = 3                  # keys named in a mismatch message; the rest are counted
WRAPPERS = ("model_state", "state_dict")   # the book's checkpoint dict; a common wrapper
NOT_A_STATE_DICT = "not a state_dict (a dict of named tensors)"


def some_keys(keys, shown=SHOWN_KEYS):
    """'a, b, c and 9 more': the first few of a list of names (each cut to 40 characters), the
    rest counted."""
    keys = list(keys)
    head = ", ".join(one_line(k, 40) for k in keys[:shown])
    return head + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _a(value):
    """'a Tensor', 'an int': what a value is, for a message."""
    name = type(value).__name__
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def state_mismatch(model, state):
    """What keeps `state` from loading strictly into `model`, in a few words ('' when it fits):
    the first missing, unexpected, non-tensor and reshaped keys, the rest counted (torch's own
    message lists every key: 13,000 characters for a ResNet's 626). A file of another model,
    sharing no key, is said so with a few of the keys it does hold."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        return f"{NOT_A_STATE_DICT}, found {_a(state)}"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if own and len(missing) == len(own):             # nothing in common: another model's file
        holds = (f"which holds {len(state)} others ({some_keys(state)})" if state
                 else "which is empty")
        return one_line(f"none of its {len(own)} tensors is in the file, {holds}", 240)
    common = [k for k in own if k in state and torch.is_tensor(own[k])]
    untensors = [k for k in common if not torch.is_tensor(state[k])]
    reshaped = [k for k in common if k not in untensors and state[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(own)} tensors missing ({some_keys(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({some_keys(unexpected)})")
    if untensors:
        k = untensors[0]
        parts.append(f"{len(untensors)} not tensors ({one_line(k, 40)} is {_a(state[k])}"
                     + (f"; and {len(untensors) - 1} more)" if len(untensors) > 1 else ")"))
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape ({one_line(k, 40)}: "
                     f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                     + (f"; and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ")"))
    return one_line("; ".join(parts), 240)


def unwrap_state(state):
    """The state_dict inside the book's checkpoint dict (`model_state`) or a `state_dict`
    wrapper; anything else unchanged."""
    if isinstance(state, dict):
        for key in WRAPPERS:
            if isinstance(state.get(key), dict):
                return state[key]
    return state


def load_state(model, state, where):
    """Strictly load the state_dict `state` (or the book's checkpoint dict holding it) into
    `model`; a DataError naming `where` (the flag and the file) says in one line why it does
    not fit."""
    state = unwrap_state(state)
    limit = MAX_MESSAGE + len(str(where))            # the reason is cut, never the file's name
    why = state_mismatch(model, state)
    if why:
        raise DataError(one_line(f"{where}: does not fit {type(model).__name__}: {why}", limit))
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:          # e.g. a dtype that cannot be copied
        raise DataError(one_line(f"{where}: does not fit {type(model).__name__} "
                                 f"({one_line(e, 120)})", limit)) from None
    return model


def load_weights(model, path, what="--weights"):
    """Strictly load a state_dict file (or the book's checkpoint dict) into `model`, read
    without running code; a wrong file is a one-line DataError naming `what` and the path."""
    return load_state(model, read_torch(path, what), f"{what} {path}")
