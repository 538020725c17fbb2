"""Chapter 13: the U-Net that segments nodule candidates in CT slices, and the book's wrapper.

The U-Net follows the design the book vendored from jvanvugt/pytorch-unet (util/unet.py in the
book's repository), written here afresh; `UNetWrapper` adds the book's input BatchNorm and
Sigmoid. Parameter names follow the book, so its published checkpoint loads strictly:

    model = UNetWrapper(in_channels=7, n_classes=1, depth=3, wf=4, padding=True,
                        batch_norm=True, up_mode="upconv")            # 118,271 parameters
    state = torch.load("part2/models/seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_"
                       "fn8-adam.best.state", weights_only=True, map_location="cpu")
    model.load_state_dict(state["model_state"])

    python -c "from ch13_segment.model import UNet; import torch; \
print(UNet()(torch.randn(1, 1, 572, 572)).shape)"                     # (1, 2, 388, 388)
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ch01_intro.weights import load_state
from ch10_luna.model import LunaModel, init_weights, read_checkpoint  # the classifier's init
from common.errors import DataError, one_line

# The book's published checkpoints of chapters 13 and 11-12, under the data root
# (python -m common.data download luna-models).
BOOK_SEG_MODEL = ("part2/models/seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_"
                  "fn8-adam.best.state")
BOOK_CLS_MODEL = "part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"

UP_MODES = ("upconv", "upsample")


def center_crop(layer: torch.Tensor, target_h: int, target_w: int) -> torch.Tensor:
    """The centre (target_h, target_w) window of an (N, C, H, W) tensor.

    Plain integer arithmetic on sizes: torch.jit.trace records it as size ops (no TracerWarning,
    and a traced U-Net still crops right at other input sizes), torch.jit.script compiles it,
    torch.export and ONNX export see ordinary slicing. Decorating it with @torch.jit.script
    would be worse: a trace calling a script function freezes the sizes passed in as constants.
    """
    top = (layer.size(2) - target_h) // 2
    left = (layer.size(3) - target_w) // 2
    return layer[:, :, top:top + target_h, left:left + target_w]


class UNetConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by ReLU and, optionally, BatchNorm.

    Without padding each convolution trims one pixel per side (H -> H - 4 for the block).
    The keys are block.0 (conv), block.2 (BN), block.3 (conv), block.5 (BN) with batch_norm,
    as in the book's checkpoints.
    """

    def __init__(self, in_size, out_size, padding, batch_norm):
        super().__init__()
        layers = []
        for conv_in in (in_size, out_size):
            layers += [nn.Conv2d(conv_in, out_size, kernel_size=3, padding=int(padding)),
                       nn.ReLU()]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_size))        # after the activation, as the book
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x)


class UNetUpBlock(nn.Module):
    """Upsample 2x (halving channels), concat the centre-cropped skip, then a conv block."""

    def __init__(self, in_size, out_size, up_mode, padding, batch_norm):
        super().__init__()
        if up_mode == "upconv":                                 # learned 2x upsampling
            self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2)
        else:                                                   # fixed bilinear, then 1x1 conv
            self.up = nn.Sequential(nn.Upsample(mode="bilinear", scale_factor=2.0),
                                    nn.Conv2d(in_size, out_size, kernel_size=1))
        # the concat holds out_size upsampled + out_size skip channels = in_size
        self.conv_block = UNetConvBlock(in_size, out_size, padding, batch_norm)

    def forward(self, x, bridge):
        up = self.up(x)
        skip = center_crop(bridge, up.size(2), up.size(3))     # unpadded: the skip is larger
        return self.conv_block(torch.cat([up, skip], dim=1))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015); the defaults give the paper's 572x572 -> 388x388 net.

    depth levels of conv blocks with 2**(wf + i) filters; between them a 2x average pool (the
    book's copy of jvanvugt's code pools by averaging, where the original and the paper take the
    max). padding=True keeps H x W (inputs then need sides divisible by 2**(depth - 1)).
    """

    def __init__(self, in_channels=1, n_classes=2, depth=5, wf=6, padding=False,
                 batch_norm=False, up_mode="upconv"):
        super().__init__()
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, not {up_mode!r}")
        self.padding = padding
        self.depth = depth
        channels = [2 ** (wf + i) for i in range(depth)]        # 64, 128, ..., 1024 by default
        self.down_path = nn.ModuleList(
            UNetConvBlock(c_in, c_out, padding, batch_norm)
            for c_in, c_out in zip([in_channels] + channels[:-1], channels))
        self.up_path = nn.ModuleList(
            UNetUpBlock(channels[i + 1], channels[i], up_mode, padding, batch_norm)
            for i in reversed(range(depth - 1)))
        self.last = nn.Conv2d(channels[0], n_classes, kernel_size=1)

    def forward(self, x):
        skips = []
        for i, down in enumerate(self.down_path):
            x = down(x)
            if i < self.depth - 1:                               # no pool after the bottom block
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for i, up in enumerate(self.up_path):
            x = up(x, skips[-1 - i])                             # deepest skip first
        return self.last(x)


class UNetWrapper(nn.Module):
    """The book's segmentation model: BatchNorm on the raw HU input, the U-Net, a Sigmoid.

    Takes the UNet keyword arguments; chapter 13 uses in_channels=7 (the slice and three context
    slices either side), n_classes=1, depth=3, wf=4, padding=True, batch_norm=True,
    up_mode='upconv'. Output: (N, n_classes, H, W) probabilities.
    """

    def __init__(self, in_channels=1, **kwargs):
        super().__init__()
        self.input_batchnorm = nn.BatchNorm2d(in_channels)
        self.unet = UNet(in_channels=in_channels, **kwargs)
        self.final = nn.Sigmoid()
        init_weights(self)

    def forward(self, input_batch):
        return self.final(self.unet(self.input_batchnorm(input_batch)))


# ----------------------------------------------------------------------------- checkpoints
def unet_kwargs(state):
    """UNetWrapper arguments read off a state_dict (padding and the 'upconv' mode assumed)."""
    down = {k.split(".")[2] for k in state if k.startswith("unet.down_path.")}
    return {"in_channels": state["input_batchnorm.weight"].shape[0],
            "n_classes": state["unet.last.weight"].shape[0], "depth": len(down),
            "wf": int(np.log2(state["unet.down_path.0.block.0.weight"].shape[0])),
            "padding": True,                      # block.2 is a BatchNorm (1-D) or a conv
            "batch_norm": state["unet.down_path.0.block.2.weight"].dim() == 1,
            "up_mode": "upconv" if "unet.up_path.0.up.weight" in state else "upsample"}


def luna_kwargs(state):
    """LunaModel arguments read off a state_dict (the 32x48x48 crop assumed)."""
    return {"in_channels": state["tail_batchnorm.weight"].shape[0],
            "conv_channels": state["block1.conv1.weight"].shape[0],
            "n_classes": state["head_linear.weight"].shape[0]}


MODEL_KINDS = {"UNetWrapper": (UNetWrapper, unet_kwargs), "LunaModel": (LunaModel, luna_kwargs)}


def load_model(path, model_name, flag):
    """A `model_name` model from a checkpoint dict (the book's or one trained here), in eval mode.

    The architecture is read from the state_dict, so smaller models trained here load too.
    Anything else (a missing file, another kind of model, a mismatched state) is a DataError.
    """
    state = read_checkpoint(path, flag)
    if state.get("model_name") != model_name:
        raise DataError(f"{flag} {path}: holds a {state.get('model_name')!r} model, "
                        f"{flag} needs a {model_name}")
    cls, kwargs_of = MODEL_KINDS[model_name]
    try:
        model = cls(**kwargs_of(state["model_state"]))
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise DataError(one_line(f"{flag} {path}: its state does not describe a {model_name} "
                                 f"({type(e).__name__}: {e})")) from None
    load_state(model, state["model_state"], f"{flag} {path}")   # read_checkpoint: finite
    return model.eval()
