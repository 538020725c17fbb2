"""Chapter 15: the LUNA classifier that every ch15 script serves or exports, and its example crop.

The model is chapter 11's nodule-vs-non-nodule LunaModel (`ch10_luna.model`), loaded from the
book's checkpoint dict (weights_only: tensors, never code; every field it reads checked for
presence, type and finite values; `model_state` loaded strictly) or seeded random for a demo
(`--random-weights`). `prob_nodule` runs it on a batch of crops the way
both servers answer: the softmax's second column. The example crop is the book's validation
crop `p3ch15/cls_val_example.pt` (a tuple of the 1 x 32 x 48 x 48 crop in HU, its one-hot label,
its series uid and its center), or, where that file is absent, `hu_like_crop`'s lung-like stand-in.
"""
import argparse
from pathlib import Path

import torch

from ch10_luna.model import LunaModel
from ch15_deploy.model_files import load_state
from ch15_deploy.wire import CROP_SHAPE
from common.data import add_data_dir_argument, book_file
from common.errors import DataError, one_line
from common.files import read_torch

CHECKPOINT_FIELDS = {"model_state": dict, "model_name": str}  # what is read; model_name optional
BOOK_CHECKPOINT = "part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"
EXAMPLE = "p3ch15/cls_val_example.pt"


def model_arguments():
    """Parent parser: --model PATH / --random-weights and --data-dir."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", default=None,
                       help="classifier checkpoint in the book's dict format (default: the "
                            f"book's {Path(BOOK_CHECKPOINT).name} under the data root)")
    group.add_argument("--random-weights", action="store_true",
                       help="an untrained LunaModel, for a demo without the checkpoint")
    add_data_dir_argument(parser)
    return parser


def read_classifier_checkpoint(path, flag="--model"):
    """The book's checkpoint dict from `path`, its fields checked; a DataError naming the file and
    the field: `model_state` missing, not a dict of named tensors, or holding NaN or Inf;
    `model_name` (optional, as in older files) not a str."""
    state = read_torch(path, flag)                           # tensors, no code
    where = f"{flag} {path}"
    if not isinstance(state, dict):
        raise DataError(f"{where}: not a checkpoint dict with a model_state (found {_a(state)})")
    if "model_state" not in state:
        held = ", ".join(repr(str(k))[:40] for k in list(state)[:3]) or "nothing"
        raise DataError(f"{where}: not a checkpoint dict with a model_state (field 'model_state' "
                        f"is missing; it holds {held})")
    for field, kind in CHECKPOINT_FIELDS.items():
        if field in state and not isinstance(state[field], kind):
            raise DataError(f"{where}: field {field!r} is {_a(state[field])}, not a "
                            f"{kind.__name__}")
    for key, value in state["model_state"].items():
        name = f"field 'model_state', entry {one_line(repr(key), 60)}"
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{where}: {name} is {_a(value)}, not a named tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DataError(f"{where}: {name} holds NaN or Inf values")
    return state


def _a(value):
    """'a list', 'an int': what a value is, for a message."""
    name = type(value).__name__
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def load_classifier(path=None, data_dir=None, random_weights=False, device="cpu", seed=0,
                    flag="--model"):
    """A LunaModel in eval mode: from a book-format checkpoint (strict), or randomly initialized."""
    if random_weights:
        with torch.random.fork_rng(devices=[]):     # seeded, without touching the caller's RNG
            torch.manual_seed(seed)
            return LunaModel().to(device).eval()
    path = Path(path) if path else book_file(BOOK_CHECKPOINT, data_dir, name="luna-models")
    state = read_classifier_checkpoint(path, flag)
    if state.get("model_name", "LunaModel") != "LunaModel":
        raise DataError(f"{flag} {path}: holds a {state['model_name'][:40]!r}, not a "
                        "LunaModel")
    model = load_state(LunaModel(), state["model_state"], f"{flag} {path}")
    return model.to(device).eval()


def model_device(model):
    """The device of a module's first parameter or buffer (cpu for one without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def prepare(model, channels_last=True):
    """Eval mode, gradients off, and the channels-last layout for an eager LunaModel (faster
    for batched 3-D convolutions on a CPU: NOTES.md); a program keeps the layout it was made with.
    """
    model.eval()
    if isinstance(model, torch.nn.Module):
        model.requires_grad_(False)
        if channels_last and not isinstance(model, torch.jit.ScriptModule):
            model = model.to(memory_format=torch.channels_last_3d)
    return model


def prob_nodule(model, crops, channels_last=False):
    """(N, 1, 32, 48, 48) HU -> (N,) float32 P(nodule): the softmax's second column, as the book.

    Takes an eager, TorchScript or exported model returning (logits, probs) or logits alone.
    """
    crops = crops.to(model_device(model))
    if channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        out = model(crops)
    probs = out[1] if isinstance(out, (tuple, list)) else out.softmax(dim=1)
    if probs.dim() != 2 or probs.shape[0] != crops.shape[0] or probs.shape[1] < 2:
        raise ValueError(f"the model answered {list(probs.shape)} for {crops.shape[0]} crops; "
                         "a classifier answers (N, 2)")
    return probs[:, 1].float().cpu()


def load_example(data_dir=None):
    """(crop (1, 32, 48, 48) float32 HU, one-hot label, series uid, center) from the book."""
    path = book_file(EXAMPLE, data_dir, name="cls-val-example")
    example = read_torch(path, "the book's validation crop")
    try:
        crop, label, series_uid, center = example
        center = torch.as_tensor(center, dtype=torch.float64)
        fits = (isinstance(crop, torch.Tensor) and tuple(crop.shape) == CROP_SHAPE
                and isinstance(label, torch.Tensor) and label.numel() == 2
                and isinstance(series_uid, str) and center.shape == (3,))
    except (TypeError, ValueError, RuntimeError):     # not a 4-tuple, or a center of text
        fits = False
    if not fits:
        raise DataError(f"{path}: not the book's (crop {list(CROP_SHAPE)}, one-hot label, "
                        "series uid, center xyz) tuple")
    if not torch.isfinite(crop).all():
        raise DataError(f"{path}: the crop holds NaN or Inf values")
    return crop.float(), label, series_uid, center


def hu_like_crop(seed=0, shape=CROP_SHAPE):
    """A stand-in crop when the book's is absent: lung-like HU noise with a dense blob."""
    g = torch.Generator().manual_seed(seed)
    crop = torch.randn(shape, generator=g) * 150 - 700               # aerated lung, about -700
    i, r, c = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - n / 2
                               for n in shape[1:]), indexing="ij")
    crop[0][(i**2 + r**2 + c**2) < 25] += 750                         # a 5-voxel ball near 0 HU
    return crop.clamp(-1000, 1000)


def example_crop(data_dir=None):
    """(crop, where it came from): the book's crop, or a random HU-like one when it is absent.

    Only a missing file is replaced; a broken one is a DataError, as everywhere else.
    """
    try:
        book_file(EXAMPLE, data_dir, name="cls-val-example")
    except DataError as e:
        return hu_like_crop(), f"a random HU-like crop ({e})"
    crop, label, *_ = load_example(data_dir)
    return crop, f"the book's crop (label {label.tolist()})"
