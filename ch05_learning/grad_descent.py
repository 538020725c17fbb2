"""Chapter 5: gradient descent by hand, and the learning-rate story.

    python ch05_learning/grad_descent.py         # writes runs/ch05/grad_descent.png

1. lr 1e-2 on the raw t_u: the updates overshoot and the loss reaches inf within a dozen epochs.
2. lr 1e-4 on the raw t_u: stable but slow (loss ~29.02 after 100 epochs), since the gradient
   for w is ~50x the one for b.
3. Normalize the input (t_un = 0.1 * t_u): lr 1e-2 is fine again; 5000 epochs give the book's
   w 5.3671, b -17.3012, loss 2.927648.
"""
import argparse
import math

import torch

from ch05_learning.thermometer import (
    DEFAULT_OUT,
    loss_fn,
    model,
    thermometer_data,
)
from common.errors import require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable


def finite_difference_grad(t_u, t_c, w, b, delta=0.1):
    """Central differences of the loss in w and in b: the book's first gradient estimate."""
    def loss_at(w_, b_):
        return loss_fn(model(t_u, w_, b_), t_c)
    dw = (loss_at(w + delta, b) - loss_at(w - delta, b)) / (2.0 * delta)
    db = (loss_at(w, b + delta) - loss_at(w, b - delta)) / (2.0 * delta)
    return torch.stack([dw, db])


def dloss_fn(t_p, t_c):
    """d(mean squared error)/d t_p for every sample: 2 (t_p - t_c) / N."""
    return 2 * (t_p - t_c) / t_p.size(0)


def dmodel_dw(t_u, w, b):
    return t_u


def dmodel_db(t_u, w, b):
    return 1.0


def grad_fn(t_u, t_c, t_p, w, b):
    """Analytic gradient [dL/dw, dL/db] by the chain rule, summed over the samples."""
    dloss_dtp = dloss_fn(t_p, t_c)
    dloss_dw = dloss_dtp * dmodel_dw(t_u, w, b)
    dloss_db = dloss_dtp * dmodel_db(t_u, w, b)
    return torch.stack([dloss_dw.sum(), dloss_db.sum()])


def training_loop(n_epochs, learning_rate, params, t_u, t_c, log_epochs=()):
    """Plain gradient descent on params = [w, b]; returns (params, loss of every epoch)."""
    losses = []
    for epoch in range(1, n_epochs + 1):
        w, b = params
        t_p = model(t_u, w, b)
        loss = loss_fn(t_p, t_c)
        grad = grad_fn(t_u, t_c, t_p, w, b)
        params = params - learning_rate * grad
        losses.append(loss.item())
        if epoch in log_epochs:
            shown = f"{loss.item():14.6f}" if loss.item() < 1e7 else f"{loss.item():14.6e}"
            print(f"  epoch {epoch:5d}  loss {shown}  "
                  f"params {_fmt(params)}  grad {_fmt(grad)}")
    return params, losses


def _fmt(t):
    return "[" + ", ".join(f"{v:.6g}" for v in t.tolist()) + "]"


def first_nonfinite_epoch(losses):
    """1-based epoch where the loss first became inf or nan (None if it never did)."""
    for epoch, loss in enumerate(losses, start=1):
        if not math.isfinite(loss):
            return epoch
    return None


def plot_story(path, t_u, t_c, params, histories):
    """Left: data and the fitted line (against t_u); right: loss per epoch for each run."""
    fig = new_figure(figsize=(11, 4.5), dpi=100)
    ax0, ax1 = fig.subplots(1, 2)
    w, b = params.tolist()
    x = torch.linspace(20.0, 90.0, 100)
    ax0.plot(t_u.numpy(), t_c.numpy(), "o", label="measured")
    ax0.plot(x.numpy(), model(0.1 * x, w, b).numpy(), "-",
             label=f"fit: {w:.4f} * (0.1 t_u) {b:+.4f}")
    ax0.set_xlabel("t_u (unknown unit)")
    ax0.set_ylabel("t_c (Celsius)")
    ax0.set_title("Linear fit after gradient descent")
    ax0.grid(alpha=0.3)
    ax0.legend()
    for label, losses in histories.items():
        finite = [v if math.isfinite(v) else float("nan") for v in losses]
        ax1.plot(range(1, len(finite) + 1), finite, label=label)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (MSE)")
    ax1.set_title("Learning-rate story (divergent run stops at inf)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend()
    return save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5000,
                   help="epochs of the normalized run (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="learning rate of the normalized run (default: %(default)s)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    require_at_least("--epochs", args.epochs, 1)
    out = check_writable(args.out, "--out")               # before the 5,000 epochs

    t_c, t_u = thermometer_data()
    w, b = torch.tensor(1.0), torch.tensor(0.0)
    t_p = model(t_u, w, b)
    analytic = grad_fn(t_u, t_c, t_p, w, b)
    numeric = finite_difference_grad(t_u, t_c, w, b)
    print(f"gradient at w=1, b=0: analytic {_fmt(analytic)}  finite-difference {_fmt(numeric)}")

    print("1) raw t_u, lr 1e-2 (diverges):")
    _, raw_fast = training_loop(15, 1e-2, torch.tensor([1.0, 0.0]), t_u, t_c,
                                log_epochs=(1, 2, 3, 10, 11, 12))
    diverged_at = first_nonfinite_epoch(raw_fast)
    print(f"   loss is no longer finite at epoch {diverged_at}")

    print("2) raw t_u, lr 1e-4 (stable, slow):")
    _, raw_slow = training_loop(100, 1e-4, torch.tensor([1.0, 0.0]), t_u, t_c,
                                log_epochs=(1, 2, 3, 100))
    print(f"   loss after 100 epochs {raw_slow[-1]:.6f}  (book: 29.022669)")

    print(f"3) normalized t_un = 0.1 * t_u, lr {args.lr:g}, {args.epochs} epochs:")
    t_un = 0.1 * t_u
    params, normalized = training_loop(args.epochs, args.lr, torch.tensor([1.0, 0.0]), t_un, t_c,
                                       log_epochs=(1, 100, args.epochs))
    w, b = params.tolist()
    print(f"   w {w:.4f}  b {b:.4f}  loss at epoch {args.epochs} {normalized[-1]:.6f}  "
          f"(book after 5000: w 5.3671, b -17.3012, loss 2.927648)")

    png = plot_story(out / "grad_descent.png", t_u, t_c, params, {
        "raw t_u, lr 1e-2": raw_fast,
        "raw t_u, lr 1e-4": raw_slow,
        f"0.1 * t_u, lr {args.lr:g}": normalized,
    })
    print(f"wrote {png}")
    return {"analytic_grad": analytic, "finite_difference_grad": numeric,
            "diverged_at": diverged_at, "raw_slow_loss": raw_slow[-1],
            "params": params, "loss": normalized[-1],
            "losses": normalized, "png": png}


if __name__ == "__main__":
    run_cli(main)
