"""Chapter 11: the LUNA nodule-candidate classifier.

Parameter names follow the book, so its published checkpoint loads strictly:

    model = LunaModel()
    state = torch.load("part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state",
                       weights_only=True, map_location="cpu")
    model.load_state_dict(state["model_state"])
"""
import math

import torch
from torch import nn

from common.errors import DataError, one_line
from common.files import read_torch

CHECKPOINT_FIELDS = {"model_state": dict, "model_name": str}  # model_name optional (older files)


class LunaBlock(nn.Module):
    """Two 3x3x3 convolutions with ReLU, then a 2x max-pool: halves every side."""

    def __init__(self, in_channels, conv_channels):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, conv_channels, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(conv_channels, conv_channels, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(2, 2)

    def forward(self, x):
        return self.maxpool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


class LunaModel(nn.Module):
    """BatchNorm tail, four LunaBlocks (8/16/32/64 channels), a linear head -> (logits, probs)."""

    def __init__(self, in_channels=1, conv_channels=8, crop_irc=(32, 48, 48), n_classes=2):
        super().__init__()
        self.tail_batchnorm = nn.BatchNorm3d(in_channels)      # normalizes raw HU
        self.block1 = LunaBlock(in_channels, conv_channels)
        self.block2 = LunaBlock(conv_channels, conv_channels * 2)
        self.block3 = LunaBlock(conv_channels * 2, conv_channels * 4)
        self.block4 = LunaBlock(conv_channels * 4, conv_channels * 8)
        # Four poolings shrink each side 16x: (32, 48, 48) -> (2, 3, 3), so 64 * 18 = 1152 inputs.
        flat = conv_channels * 8 * math.prod(s // 16 for s in crop_irc)
        self.head_linear = nn.Linear(flat, n_classes)
        self.head_activation = nn.Softmax(dim=1)
        init_weights(self)

    def forward(self, x):                                       # x: (N, 1, 32, 48, 48) in HU
        x = self.tail_batchnorm(x)
        for block in (self.block1, self.block2, self.block3, self.block4):
            x = block(x)                                        # ... -> (N, 64, 2, 3, 3)
        logits = self.head_linear(x.flatten(1))                 # (N, 2)
        return logits, self.head_activation(logits)


def init_weights(model, linear_mode="fan_in"):
    """Kaiming-normal weights and small biases on every conv (2-D, 3-D, transposed) and linear
    layer; chapter 13's U-Net uses it too.

    Two departures from the book, both about the start of training: the book drew biases with
    normal_(bias, -bound, bound), i.e. mean -bound and std bound, where a symmetric
    uniform(-bound, bound) is meant; and it used fan_out for the linear head too, where fan_out
    is 2, so the initial logits had a std of about 30 and the first hundred steps went into
    undoing that. The convolutions keep fan_out; linear layers use `linear_mode` (the book's
    "fan_out" to reproduce it).
    """
    kinds = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    for m in model.modules():
        if isinstance(m, kinds):
            mode = linear_mode if isinstance(m, nn.Linear) else "fan_out"
            nn.init.kaiming_normal_(m.weight, a=0, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                # fan_out as torch computes it: dim 0 of the weight times the kernel size
                fan_out = m.weight.shape[0] * math.prod(m.weight.shape[2:])
                bound = 1 / math.sqrt(fan_out)
                nn.init.uniform_(m.bias, -bound, bound)


def read_checkpoint(path, flag="checkpoint"):
    """The book's checkpoint dict (`model_state`, `model_name`, ...) from `path`, read by
    common.files.read_torch (tensors, never code), its fields checked: a DataError naming
    `flag`, the file and the field when `model_state` is missing, is not a dict of named tensors
    or holds NaN or Inf, or `model_name` (optional, as in older files) is not a str."""
    state = read_torch(path, flag)
    where = f"{flag} {path}"
    if not isinstance(state, dict):
        raise DataError(f"{where}: not a checkpoint dict with a model_state (found {a(state)})")
    if "model_state" not in state:
        held = ", ".join(repr(str(k))[:40] for k in list(state)[:3]) or "nothing"
        raise DataError(f"{where}: not a checkpoint dict with a model_state (field 'model_state' "
                        f"is missing; it holds {held})")
    for field, kind in CHECKPOINT_FIELDS.items():
        if field in state and not isinstance(state[field], kind):
            raise DataError(f"{where}: field {field!r} is {a(state[field])}, not a "
                            f"{kind.__name__}")
    for key, value in state["model_state"].items():
        name = f"field 'model_state', entry {one_line(repr(key), 60)}"
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{where}: {name} is {a(value)}, not a named tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DataError(f"{where}: {name} holds NaN or Inf values")
    return state


def a(value):
    """'a list', 'an int': what a value is, for a message."""
    name = type(value).__name__
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name
