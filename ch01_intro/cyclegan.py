"""Chapter 2: the CycleGAN generator that turns horses into zebras.

    python ch01_intro/cyclegan.py      # prints the layer list and the parameter count

`ResNetGenerator(input_nc=3, output_nc=3, ngf=64, n_blocks=9)` as in the book: one
`nn.Sequential` called `model`, so the book's `horse2zebra_0.4.0.pth` (keys `model.1.weight`,
`model.10.conv_block.1.weight`, ..., `model.26.bias`) loads with a strict `load_state_dict`.
InstanceNorm2d has no affine parameters and no running statistics: only the convolutions
carry weights. 11,378,179 parameters.
"""
import argparse

from torch import nn

from ch01_intro.resnet import count_parameters
from common.errors import run_cli


class ResNetBlock(nn.Module):
    """x + (reflect pad, 3x3 conv, InstanceNorm, ReLU, reflect pad, 3x3 conv, InstanceNorm)(x)."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(            # indices 1 and 5 hold the weights
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            nn.InstanceNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


def _down(in_channels, out_channels):
    """Stride-2 3x3 conv, InstanceNorm, ReLU: halves H and W."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=True),
            nn.InstanceNorm2d(out_channels), nn.ReLU(inplace=True)]


def _up(in_channels, out_channels):
    """Stride-2 3x3 transposed conv, InstanceNorm, ReLU: doubles H and W."""
    return [nn.ConvTranspose2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1,
                               output_padding=1, bias=True),
            nn.InstanceNorm2d(out_channels), nn.ReLU(inplace=True)]


class ResNetGenerator(nn.Module):
    """(N, 3, H, W) image in [0, 1], as the book feeds it -> (N, 3, H, W) in [-1, 1] (Tanh)."""

    def __init__(self, input_nc=3, output_nc=3, ngf=64, n_blocks=9):
        super().__init__()
        layers = [nn.ReflectionPad2d(3),                                    # model.0
                  nn.Conv2d(input_nc, ngf, kernel_size=7, bias=True),       # model.1
                  nn.InstanceNorm2d(ngf), nn.ReLU(inplace=True)]
        layers += _down(ngf, ngf * 2) + _down(ngf * 2, ngf * 4)             # model.4, model.7
        layers += [ResNetBlock(ngf * 4) for _ in range(n_blocks)]           # model.10..18
        layers += _up(ngf * 4, ngf * 2) + _up(ngf * 2, ngf)                 # model.19, model.22
        layers += [nn.ReflectionPad2d(3),
                   nn.Conv2d(ngf, output_nc, kernel_size=7),                # model.26
                   nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):                       # (N, 3, H, W), H and W multiples of 4
        return self.model(x)                    # (N, 3, H, W) in [-1, 1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    model = ResNetGenerator()
    for i, layer in enumerate(model.model):
        n = count_parameters(layer)
        print(f"  model.{i:<3d} {type(layer).__name__:18s} {n:>10,} parameters")
    print(f"ResNetGenerator: {count_parameters(model):,} parameters, "
          f"{len(model.state_dict())} state_dict entries")
    return model


if __name__ == "__main__":
    run_cli(main)
