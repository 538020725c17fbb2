"""Chapter 8: the CIFAR-2 convnets, from the book's Net to a deep residual net.

    python ch08_convnets/models.py        # parameter counts and output shapes of every model

Attribute names follow the book, so its trained Net (data/p1ch6/birds_vs_airplanes.pt) loads with
a strict load_state_dict. Every model takes normalized (N, 3, 32, 32) images, returns (N, 2) logits.
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ch01_intro.resnet import count_parameters
from ch01_intro.weights import load_state
from common.data import add_data_dir_argument, book_file
from common.device import map_location
from common.errors import run_cli
from common.files import read_torch

BOOK_NET_FILE = "p1ch6/birds_vs_airplanes.pt"


class Net(nn.Module):
    """conv 3->16, tanh, pool, conv 16->8, tanh, pool, fc 512->32, tanh, fc 32->2: 18,090 params."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)      # (N, 16, 16, 16)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)    # (N, 8, 8, 8)
        out = out.view(-1, 8 * 8 * 8)                         # flatten for the linear layers
        out = torch.tanh(self.fc1(out))
        return self.fc2(out)


class NetWidth(nn.Module):
    """Net with n_chans1 channels in the first conv and n_chans1 // 2 in the second."""

    def __init__(self, n_chans1=32):
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = out.view(-1, 8 * 8 * self.n_chans1 // 2)
        out = torch.tanh(self.fc1(out))
        return self.fc2(out)


class NetDropout(nn.Module):
    """NetWidth with Dropout2d(p=0.4) after each conv block: zeroes whole channels in training."""

    def __init__(self, n_chans1=32):
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv1_dropout = nn.Dropout2d(p=0.4)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv2_dropout = nn.Dropout2d(p=0.4)
        self.fc1 = nn.Linear(8 * 8 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = self.conv1_dropout(out)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = self.conv2_dropout(out)
        out = out.view(-1, 8 * 8 * self.n_chans1 // 2)
        out = torch.tanh(self.fc1(out))
        return self.fc2(out)


class NetBatchNorm(nn.Module):
    """NetWidth with BatchNorm2d between each conv and its tanh: 38,482 params."""

    def __init__(self, n_chans1=32):
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv1_batchnorm = nn.BatchNorm2d(num_features=n_chans1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv2_batchnorm = nn.BatchNorm2d(num_features=n_chans1 // 2)
        self.fc1 = nn.Linear(8 * 8 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = self.conv1_batchnorm(self.conv1(x))
        out = F.max_pool2d(torch.tanh(out), 2)
        out = self.conv2_batchnorm(self.conv2(out))
        out = F.max_pool2d(torch.tanh(out), 2)
        out = out.view(-1, 8 * 8 * self.n_chans1 // 2)
        out = torch.tanh(self.fc1(out))
        return self.fc2(out)


class NetDepth(nn.Module):
    """Three conv blocks with ReLU (32 -> 16 -> 8 -> 4 pixels), fc 256 -> 32 -> 2: 16,130 params."""

    def __init__(self, n_chans1=32):
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(n_chans1 // 2, n_chans1 // 2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(4 * 4 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
        out = F.max_pool2d(torch.relu(self.conv3(out)), 2)
        out = out.view(-1, 4 * 4 * self.n_chans1 // 2)
        out = torch.relu(self.fc1(out))
        return self.fc2(out)


class NetRes(nn.Module):
    """NetDepth plus a skip connection around conv3: same 16,130 params."""

    def __init__(self, n_chans1=32):
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(n_chans1 // 2, n_chans1 // 2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(4 * 4 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
        out1 = out                                            # (N, 16, 8, 8): the skip path
        out = F.max_pool2d(torch.relu(self.conv3(out)) + out1, 2)
        out = out.view(-1, 4 * 4 * self.n_chans1 // 2)
        out = torch.relu(self.fc1(out))
        return self.fc2(out)


class ResBlock(nn.Module):
    """3x3 conv (no bias), BatchNorm, ReLU, plus the input: the shape is unchanged."""

    def __init__(self, n_chans):
        super().__init__()
        self.conv = nn.Conv2d(n_chans, n_chans, kernel_size=3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(num_features=n_chans)
        torch.nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        torch.nn.init.constant_(self.batch_norm.weight, 0.5)   # small residuals at the start
        torch.nn.init.zeros_(self.batch_norm.bias)

    def forward(self, x):
        out = torch.relu(self.batch_norm(self.conv(x)))
        return out + x


class NetResDeep(nn.Module):
    """conv 3->n_chans1, n_blocks ResBlocks at 16x16, pool, fc 8*8*n_chans1 -> 32 -> 2.

    The book builds its blocks with `n_blocks * [ResBlock(n_chans1)]`, which repeats ONE block
    (one set of weights applied n_blocks times). Here every block is its own module, as the
    text intends: n_blocks=10 has 159,330 parameters (the book's shared version: 75,810).
    """

    def __init__(self, n_chans1=32, n_blocks=10):
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.resblocks = nn.Sequential(*(ResBlock(n_chans=n_chans1) for _ in range(n_blocks)))
        self.fc1 = nn.Linear(8 * 8 * n_chans1, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)     # (N, n_chans1, 16, 16)
        out = self.resblocks(out)
        out = F.max_pool2d(out, 2)                             # (N, n_chans1, 8, 8)
        out = out.view(-1, 8 * 8 * self.n_chans1)
        out = torch.relu(self.fc1(out))
        return self.fc2(out)


MODELS = {"net": Net, "width": NetWidth, "dropout": NetDropout, "batchnorm": NetBatchNorm,
          "depth": NetDepth, "res": NetRes, "resdeep": NetResDeep}


def make_model(name, n_chans1=32, n_blocks=10):
    """A model by its MODELS name; n_chans1 / n_blocks apply where the model takes them."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: one of {', '.join(MODELS)}")
    if name == "net":
        return Net()
    if name == "resdeep":
        return NetResDeep(n_chans1=n_chans1, n_blocks=n_blocks)
    return MODELS[name](n_chans1=n_chans1)


def load_book_net(data_dir=None, device="cpu"):
    """The book's trained Net (birds_vs_airplanes.pt), loaded with strict key and shape checks."""
    path = book_file(BOOK_NET_FILE, data_dir, name="birds-vs-airplanes")
    state = read_torch(path, "--load book", map_location(device))
    return load_state(Net().to(device), state, f"--load book {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--n-blocks", type=int, default=10, help="NetResDeep blocks (default: 10)")
    args = p.parse_args(argv)
    x = torch.randn(4, 3, 32, 32)
    counts = {}
    for name in MODELS:
        model = make_model(name, n_blocks=args.n_blocks).eval()
        counts[name] = count_parameters(model)
        print(f"{name:>9} {type(model).__name__:>12}: {counts[name]:>9,} parameters, "
              f"output {tuple(model(x).shape)}")
    print("Net parameters per tensor:", [p.numel() for p in Net().parameters()])
    return counts


if __name__ == "__main__":
    run_cli(main)
