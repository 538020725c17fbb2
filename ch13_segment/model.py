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

import torch
import torch.nn.functional as F
from torch import nn

from ch10_luna.model import init_weights  # the same initialisation as the classifier

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
