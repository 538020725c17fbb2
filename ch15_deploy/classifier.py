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

from ch10_luna.model import LunaModel, read_checkpoint
from ch15_deploy.model_files import load_state
from ch15_deploy.wire import CROP_SHAPE
from common.data import add_data_dir_argument, book_file
from common.errors import DataError
from common.files import read_torch

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


def load_classifier(path=None, data_dir=None, random_weights=False, device="cpu", seed=0,
                    flag="--model"):
    """A LunaModel in eval mode: from a book-format checkpoint (strict), or randomly initialized."""
    if random_weights:
        with torch.random.fork_rng(devices=[]):     # seeded, without touching the caller's RNG
            torch.manual_seed(seed)
            return LunaModel().to(device).eval()
    path = Path(path) if path else book_file(BOOK_CHECKPOINT, data_dir, name="luna-models")
    state = read_checkpoint(path, flag)                     # its fields checked
    if state.get("model_name", "LunaModel") != "LunaModel":
        raise DataError(f"{flag} {path}: holds a {state['model_name'][:40]!r}, not a "
                        "LunaModel")
    model = load_state(LunaModel(), state["model_state"], f"{flag} {path}")
    return model.to(device).eval()


def model_device(model):
    """The device of a module's first parameter or buffer (cpu for one without any); a
    prepared callable's `device`."""
    if not isinstance(model, torch.nn.Module):
        return getattr(model, "device", torch.device("cpu"))
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
    # A lone crop goes to an eager LunaModel as a batch of two: oneDNN's fp32 3-D convolution
    # is several times slower at batch 1 than at 2 (NOTES.md, "Latency").
    one = len(crops) == 1 and isinstance(model, LunaModel)
    with torch.inference_mode():
        out = model(crops.expand(2, *crops.shape[1:]) if one else crops)
    probs = out[1] if isinstance(out, (tuple, list)) else out.softmax(dim=1)
    probs = probs[:1] if one else probs
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
