"""Chapter 6: activation functions and where they saturate.

    python ch05_learning/activations.py          # writes runs/ch05/activations.png

Each panel plots one activation on [-3, 3]; the shaded parts are where the slope is below 0.05,
i.e. where a change of input barely moves the output (saturation, or ReLU's flat half). Tanh
and Sigmoid squash everything into (-1, 1) and (0, 1); Hardtanh clips at +-1; ReLU keeps the
positive half unchanged; LeakyReLU and ELU let a little of the negative half through.
"""
import argparse

import torch
from torch import nn

from ch05_learning.thermometer import DEFAULT_OUT
from common.errors import run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable

FLAT_SLOPE = 0.05


def activation_list():
    """(name, module) pairs in the book's order, plus two later favourites (ELU, GELU)."""
    return [
        ("Tanh", nn.Tanh()),
        ("Hardtanh", nn.Hardtanh()),
        ("Sigmoid", nn.Sigmoid()),
        ("Softplus", nn.Softplus()),
        ("ReLU", nn.ReLU()),
        ("LeakyReLU(0.1)", nn.LeakyReLU(negative_slope=0.1)),
        ("ELU", nn.ELU()),
        ("GELU", nn.GELU()),
        ("Tanhshrink", nn.Tanhshrink()),
    ]


def evaluate(activation, x):
    """(output, slope) of an activation at x, the slope by autograd."""
    x = x.detach().clone().requires_grad_(True)
    y = activation(x)
    (slope,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), slope


def output_ranges(x=None):
    """{name: (min output, max output)} over x (default: the book's arange(-3, 3.1, 0.1))."""
    x = torch.arange(-3.0, 3.1, 0.1) if x is None else x
    ranges = {}
    for name, act in activation_list():
        y, _ = evaluate(act, x)
        ranges[name] = (y.min().item(), y.max().item())
    return ranges


def plot_activations(path, x):
    acts = activation_list()
    fig = new_figure(figsize=(10, 9), dpi=100)
    axes = fig.subplots(3, 3, sharex=True)
    for ax, (name, act) in zip(axes.flat, acts, strict=True):
        y, slope = evaluate(act, x)
        flat = (slope.abs() < FLAT_SLOPE).numpy()
        ax.fill_between(x.numpy(), -3.2, 3.2, where=flat, color="tab:red", alpha=0.15,
                        label=f"|slope| < {FLAT_SLOPE}")
        ax.plot(x.numpy(), y.numpy(), color="tab:blue", lw=2)
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_ylim(-3.2, 3.2)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Activation functions on [-3, 3] (shaded: flat, little gradient flows)")
    return save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    out = check_writable(args.out, "--out")      # made by the first write, not before

    x = torch.linspace(-3.0, 3.0, 601)
    ranges = output_ranges()
    print("outputs over arange(-3, 3.1, 0.1):")
    for name, (lo, hi) in ranges.items():
        print(f"  {name:15s} min {lo:8.4f}  max {hi:8.4f}")
    png = plot_activations(out / "activations.png", x)
    print(f"wrote {png}")
    return {"ranges": ranges, "png": png}


if __name__ == "__main__":
    run_cli(main)
