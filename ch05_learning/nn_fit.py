"""Chapter 6: replace the line with a small neural network, 1 -> 13 (Tanh) -> 1.

    python ch05_learning/nn_fit.py               # writes runs/ch05/nn_fit.png

nn.Sequential names its children 0, 1, 2; built from an OrderedDict they get the book's names
(hidden_linear, hidden_activation, output_linear). Parameters: hidden_linear.weight (13, 1),
hidden_linear.bias (13,), output_linear.weight (1, 13), output_linear.bias (1,): 40 in all.
SGD lr 1e-3 for 5000 epochs on the same kind of split as before (book: train ~2.11, val ~2.02;
the exact values depend on the random split and init).
"""
import argparse
from collections import OrderedDict

import torch
from torch import nn

from ch05_learning.nn_linear import batched_data, training_loop
from ch05_learning.optimizers import split_indices
from ch05_learning.thermometer import DEFAULT_OUT, plot_fits
from common.device import seed_everything
from common.errors import require_at_least, run_cli
from common.files import check_writable

N_HIDDEN = 13


def seq_model(n_hidden=N_HIDDEN):
    """The book's first network with anonymous children: 0 (Linear), 1 (Tanh), 2 (Linear)."""
    return nn.Sequential(nn.Linear(1, n_hidden), nn.Tanh(), nn.Linear(n_hidden, 1))


def named_seq_model(n_hidden=N_HIDDEN):
    """The same network with the book's child names."""
    return nn.Sequential(OrderedDict([
        ("hidden_linear", nn.Linear(1, n_hidden)),
        ("hidden_activation", nn.Tanh()),
        ("output_linear", nn.Linear(n_hidden, 1)),
    ]))


def parameter_table(model):
    """[(name, shape, numel)] for every parameter."""
    return [(name, tuple(p.shape), p.numel()) for name, p in model.named_parameters()]


def print_parameter_table(model):
    rows = parameter_table(model)
    for name, shape, numel in rows:
        print(f"  {name:28s} {str(shape):10s} {numel:4d}")
    print(f"  {'total':28s} {'':10s} {sum(r[2] for r in rows):4d}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5000, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-3, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="split and init (default: %(default)s)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    require_at_least("--epochs", args.epochs, 1)
    out = check_writable(args.out, "--out")      # made by the first write, not before

    print("nn.Sequential parameters:")
    print_parameter_table(seq_model())

    t_c, t_u = batched_data()
    t_un = 0.1 * t_u
    seed_everything(args.seed)
    train_idx, val_idx = split_indices(t_u.shape[0])
    model = named_seq_model()
    print(model)
    print("named parameters:")
    print_parameter_table(model)

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    history = training_loop(args.epochs, optimizer, model, nn.MSELoss(),
                            (t_un[train_idx], t_c[train_idx]), (t_un[val_idx], t_c[val_idx]))
    print("  (book after 5000 epochs: train ~2.11, val ~2.02; depends on the split and init)")
    with torch.no_grad():
        val_pred = model(t_un[val_idx])
    print("validation output", [round(v, 4) for v in val_pred.flatten().tolist()],
          " answer", t_c[val_idx].flatten().tolist())
    grad = model.hidden_linear.weight.grad.flatten()
    print("hidden_linear.weight.grad (last step)", [round(v, 4) for v in grad[:4].tolist()], "...")

    t_range = torch.arange(20.0, 90.0).unsqueeze(1)
    with torch.no_grad():
        curve = model(0.1 * t_range)
        at_data = model(t_un)
    png = plot_fits(out / "nn_fit.png", t_u, t_c,
                    curves=[("network (1-13-1, Tanh)", t_range, curve)],
                    points=[("network at the readings", t_u, at_data)],
                    title=f"Neural network fit after {args.epochs} epochs")
    print(f"wrote {png}")
    return {"model": model, "history": history, "train_idx": train_idx, "val_idx": val_idx,
            "png": png}


if __name__ == "__main__":
    run_cli(main)
