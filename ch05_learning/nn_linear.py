"""Chapter 6: the thermometer fit with nn.Linear and nn.MSELoss.

    python ch05_learning/nn_linear.py

nn modules expect a batch dimension first: the 11 readings become an (11, 1) tensor (11 samples,
1 feature). Call a module (`linear_model(x)`, i.e. `__call__`), not `.forward(x)`: `__call__`
also runs the hooks. Started from w=1, b=0, SGD(lr=1e-2) on 0.1 * t_u reproduces the chapter-5
numbers (w 5.3671, b -17.3012); the book's own run starts from a random init on a random split.
"""
import argparse

import torch
from torch import nn

from ch05_learning.optimizers import split_indices
from ch05_learning.thermometer import thermometer_data
from common.device import seed_everything
from common.errors import require_at_least, run_cli


def batched_data():
    """(t_c, t_u) as (11, 1) tensors: a batch of 11 samples with one feature each."""
    t_c, t_u = thermometer_data()
    return t_c.unsqueeze(1), t_u.unsqueeze(1)


def linear_from(w=1.0, b=0.0):
    """nn.Linear(1, 1) set to a given weight and bias (the chapter-5 starting point)."""
    linear = nn.Linear(1, 1)
    with torch.no_grad():
        linear.weight.fill_(w)
        linear.bias.fill_(b)
    return linear


def fit_module(module, x, y, n_epochs, lr=1e-2):
    """Full-batch SGD with nn.MSELoss, no split (the parity run); returns every epoch's loss."""
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    losses = []
    for epoch in range(1, n_epochs + 1):
        loss = loss_fn(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if epoch % 1000 == 0 or epoch == n_epochs:
            print(f"  epoch {epoch:5d}  loss {loss.item():.6f}")
    return losses


def training_loop(n_epochs, optimizer, model, loss_fn, train, val):
    """Chapter 6's loop: any model and loss, trained on train = (t_u, t_c) and scored on the
    held-out val = (t_u, t_c) without a graph; returns [(epoch, train loss, val loss)],
    printed at epoch 1, every 1000th and the last."""
    (t_u_train, t_c_train), (t_u_val, t_c_val) = train, val
    history = []
    for epoch in range(1, n_epochs + 1):
        t_p_train = model(t_u_train)
        loss_train = loss_fn(t_p_train, t_c_train)
        with torch.no_grad():
            loss_val = loss_fn(model(t_u_val), t_c_val)
        optimizer.zero_grad()
        loss_train.backward()
        optimizer.step()
        history.append((epoch, loss_train.item(), loss_val.item()))
        if epoch == 1 or epoch % 1000 == 0 or epoch == n_epochs:
            print(f"  epoch {epoch:5d}  train loss {loss_train.item():.4f}  "
                  f"val loss {loss_val.item():.4f}")
    return history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5000,
                   help="epochs of the parity run (default: %(default)s)")
    p.add_argument("--val-epochs", type=int, default=3000,
                   help="epochs of the train/validation run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    args = p.parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--val-epochs", args.val_epochs)):
        require_at_least(flag, value, 1)

    t_c, t_u = batched_data()
    t_un = 0.1 * t_u
    print(f"inputs {tuple(t_un.shape)}, targets {tuple(t_c.shape)}")

    linear = linear_from(1.0, 0.0)
    same = torch.equal(linear(t_un), linear.forward(t_un))
    print(f"module(x) == module.forward(x): {same} (but call the module: __call__ runs hooks)")
    print(f"parity run: nn.Linear from w=1, b=0, SGD lr 1e-2, {args.epochs} epochs")
    losses = fit_module(linear, t_un, t_c, args.epochs)
    w, b = linear.weight.item(), linear.bias.item()
    print(f"  w {w:.4f}  b {b:.4f}  (chapter 5 after 5000: 5.3671, -17.3012)")

    seed_everything(args.seed)
    train_idx, val_idx = split_indices(t_u.shape[0])
    linear_model = nn.Linear(1, 1)  # random init, as in the book
    print(f"train/val run from a random init (seed {args.seed}), {args.val_epochs} epochs")
    optimizer = torch.optim.SGD(linear_model.parameters(), lr=1e-2)
    history = training_loop(args.val_epochs, optimizer, linear_model, nn.MSELoss(),
                            (t_un[train_idx], t_c[train_idx]), (t_un[val_idx], t_c[val_idx]))
    print(f"  weight {linear_model.weight.item():.4f}  bias {linear_model.bias.item():.4f}")
    return {"parity_module": linear, "parity_losses": losses, "w": w, "b": b,
            "model": linear_model, "history": history, "train_idx": train_idx,
            "val_idx": val_idx}


if __name__ == "__main__":
    run_cli(main)
