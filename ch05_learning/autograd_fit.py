"""Chapter 5: the same fit with autograd computing the gradient.

    python ch05_learning/autograd_fit.py

`params.grad` accumulates across `backward()` calls (so it is zeroed every epoch) and the update
runs under `torch.no_grad()` so it does not become part of the graph. Same result as
grad_descent.py: w 5.3671, b -17.3012, loss ~2.9276 after 5000 epochs on 0.1 * t_u, lr 1e-2.
"""
import argparse

import torch

from ch05_learning.thermometer import loss_fn, model, thermometer_data
from common.errors import require_at_least, run_cli


def autograd_grad(t_u, t_c, w=1.0, b=0.0):
    """dL/d[w, b] at (w, b) from one backward pass."""
    params = torch.tensor([w, b], requires_grad=True)
    loss_fn(model(t_u, *params), t_c).backward()
    return params.grad


def accumulation_demo(t_u, t_c):
    """Two backward passes without zeroing: the second grad is twice the first."""
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    loss_fn(model(t_u, *params), t_c).backward()
    once = params.grad.clone()
    loss_fn(model(t_u, *params), t_c).backward()
    twice = params.grad.clone()
    params.grad.zero_()
    return once, twice, params.grad.clone()


def training_loop(n_epochs, learning_rate, params, t_u, t_c):
    """Gradient descent with autograd; params is a leaf tensor with requires_grad=True.
    Prints the loss every 500 epochs and at the last."""
    for epoch in range(1, n_epochs + 1):
        if params.grad is not None:
            params.grad.zero_()
        loss = loss_fn(model(t_u, *params), t_c)
        loss.backward()
        with torch.no_grad():
            params -= learning_rate * params.grad
        if epoch % 500 == 0 or epoch == n_epochs:
            print(f"  epoch {epoch:5d}  loss {loss.item():.6f}")
    return params, loss.item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5000, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-2, help="default: %(default)s")
    args = p.parse_args(argv)
    require_at_least("--epochs", args.epochs, 1)

    t_c, t_u = thermometer_data()
    once, twice, zeroed = accumulation_demo(t_u, t_c)
    print("grad accumulates: after one backward {}, after two {}, after zero_() {}".format(
        *(f"[{g[0]:.4f}, {g[1]:.4f}]" for g in (once, twice, zeroed))))

    t_un = 0.1 * t_u
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    params, loss = training_loop(args.epochs, args.lr, params, t_un, t_c)
    w, b = params.tolist()
    print(f"w {w:.4f}  b {b:.4f}  loss {loss:.6f}  "
          "(book after 5000 epochs: 5.3671, -17.3012, 2.927645)")
    return {"params": params.detach(), "loss": loss, "grad_once": once, "grad_twice": twice}


if __name__ == "__main__":
    run_cli(main)
