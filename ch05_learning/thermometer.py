"""Chapter 5: the thermometer data, the linear model and its loss, broadcasting.

    python ch05_learning/thermometer.py          # writes runs/ch05/thermometer_data.png

The other chapter-5/6 scripts import the data, `model`, `loss_fn` and `plot_fits` from here.
"""
import argparse

import torch

from common.errors import run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

# The book's eleven readings: Celsius from a good thermometer, and the same moments on a
# thermometer of unknown unit (book ch5.2.2).
T_C = [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]
T_U = [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]
DEFAULT_OUT = str(runs_dir("ch05"))         # the repository's runs/ch05, from any folder


def thermometer_data():
    """(t_c, t_u) as float32 tensors of shape (11,)."""
    return torch.tensor(T_C), torch.tensor(T_U)


def model(t_u, w, b):
    """The linear model t_c ~ w * t_u + b (scalars or tensors: broadcasting does the rest)."""
    return w * t_u + b


def loss_fn(t_p, t_c):
    """Mean squared error between predictions and the Celsius readings."""
    return ((t_p - t_c) ** 2).mean()


def broadcasting_demo():
    """The book's shapes: () * (3,1) -> (3,1); (3,1) * (1,3) -> (3,3); * (2,1,1) -> (2,3,3)."""
    x = torch.ones(())
    y = torch.ones(3, 1)
    z = torch.ones(1, 3)
    a = torch.ones(2, 1, 1)
    return {
        "x": tuple(x.shape), "y": tuple(y.shape), "z": tuple(z.shape), "a": tuple(a.shape),
        "x * y": tuple((x * y).shape),
        "y * z": tuple((y * z).shape),
        "y * z * a": tuple((y * z * a).shape),
    }


def plot_fits(path, t_u, t_c, curves=(), points=(), title=None, xlabel="t_u (unknown unit)"):
    """Scatter of the readings plus curves [(label, x, y)] and extra points [(label, x, y)]."""
    fig = new_figure(figsize=(6, 4.5), dpi=100)
    ax = fig.subplots()
    ax.plot(t_u.numpy(), t_c.numpy(), "o", color="tab:blue", label="measured")
    for label, x, y in curves:
        ax.plot(x.detach().numpy(), y.detach().numpy(), "-", label=label)
    for label, x, y in points:
        ax.plot(x.detach().numpy(), y.detach().numpy(), "x", color="k", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("t_c (Celsius)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    out = check_writable(args.out, "--out")      # made by the first write, not before

    t_c, t_u = thermometer_data()
    print(f"t_c {tuple(t_c.shape)}: {T_C}")
    print(f"t_u {tuple(t_u.shape)}: {T_U}")
    w, b = torch.ones(()), torch.zeros(())
    t_p = model(t_u, w, b)
    loss = loss_fn(t_p, t_c)
    print(f"w=1, b=0: loss {loss.item():.4f}  (book: 1763.8846; float32 summation order)")
    shapes = broadcasting_demo()
    for name, shape in shapes.items():
        print(f"  shape of {name:9s} {shape}")
    png = plot_fits(out / "thermometer_data.png", t_u, t_c,
                    title="Thermometer readings (book ch5)")
    print(f"wrote {png}")
    return {"loss": loss.item(), "shapes": shapes, "png": png}


if __name__ == "__main__":
    run_cli(main)
