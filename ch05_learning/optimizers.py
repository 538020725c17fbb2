"""Chapter 5: torch.optim (SGD, Adam) and a train/validation split.

    python ch05_learning/optimizers.py

- SGD(lr=1e-2) on 0.1 * t_u follows exactly the hand-written loop: w 5.3671, b -17.3012.
- Adam(lr=1e-1) adapts the step per parameter, so it copes with the raw t_u:
  2000 epochs give w ~0.5367, b ~-17.3021 (the same line: 0.5367 = 5.3671 / 10).
- A random 20% of the 11 points (2) is held out; the validation loss is computed under
  torch.no_grad() (no graph, requires_grad False) and shows how well the fit generalizes.
"""
import argparse

import torch

from ch05_learning.thermometer import loss_fn, model, thermometer_data
from common.device import seed_everything
from common.errors import require_at_least, run_cli


def training_loop(n_epochs, optimizer, params, t_u, t_c):
    """The optimizer version of the loop: zero_grad, backward, step; the loss every 500 epochs
    and at the last. Returns (params, the loss of every epoch)."""
    losses = []
    for epoch in range(1, n_epochs + 1):
        t_p = model(t_u, *params)
        loss = loss_fn(t_p, t_c)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if epoch % 500 == 0 or epoch == n_epochs:
            print(f"  epoch {epoch:5d}  loss {loss.item():.6f}")
    return params, losses


def split_indices(n_samples, val_fraction=0.2, generator=None):
    """Shuffle 0..n-1 and cut off int(val_fraction * n) indices for validation: (train, val)."""
    n_val = int(val_fraction * n_samples)
    shuffled = torch.randperm(n_samples, generator=generator)
    return shuffled[:-n_val], shuffled[-n_val:]


def validation_loss(params, t_u, t_c):
    """Loss on held-out data under no_grad: no graph is built, so requires_grad is False."""
    with torch.no_grad():
        return loss_fn(model(t_u, *params), t_c)


def train_val_loop(n_epochs, optimizer, params, train, val):
    """training_loop on train = (t_u, t_c), with the held-out val = (t_u, t_c) scored every
    epoch without a graph; returns [(epoch, train loss, val loss)], printed at epoch 1, every
    500th and the last."""
    (train_t_u, train_t_c), (val_t_u, val_t_c) = train, val
    history = []
    for epoch in range(1, n_epochs + 1):
        train_loss = loss_fn(model(train_t_u, *params), train_t_c)
        val_loss = validation_loss(params, val_t_u, val_t_c)
        optimizer.zero_grad()
        train_loss.backward()                   # only the training loss makes gradients
        optimizer.step()
        history.append((epoch, train_loss.item(), val_loss.item()))
        if epoch == 1 or epoch % 500 == 0 or epoch == n_epochs:
            print(f"  epoch {epoch:5d}  train loss {train_loss.item():.4f}  "
                  f"val loss {val_loss.item():.4f}")
    return history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5000, help="SGD epochs (default: %(default)s)")
    p.add_argument("--adam-epochs", type=int, default=2000, help="default: %(default)s")
    p.add_argument("--val-epochs", type=int, default=3000,
                   help="epochs of the train/validation run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split (default: %(default)s)")
    args = p.parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--adam-epochs", args.adam_epochs),
                        ("--val-epochs", args.val_epochs)):
        require_at_least(flag, value, 1)

    t_c, t_u = thermometer_data()
    t_un = 0.1 * t_u

    print(f"SGD lr 1e-2 on 0.1 * t_u, {args.epochs} epochs:")
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    sgd_params, sgd_losses = training_loop(args.epochs, torch.optim.SGD([params], lr=1e-2),
                                           params, t_un, t_c)
    w, b = sgd_params.tolist()
    print(f"  w {w:.4f}  b {b:.4f}  (book after 5000: 5.3671, -17.3012, loss 2.927648)")

    print(f"Adam lr 1e-1 on raw t_u, {args.adam_epochs} epochs:")
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    adam_params, adam_losses = training_loop(args.adam_epochs, torch.optim.Adam([params], lr=1e-1),
                                             params, t_u, t_c)
    w, b = adam_params.tolist()
    print(f"  w {w:.4f}  b {b:.4f}  (book after 2000: 0.5367, -17.3021, loss 2.927680)")

    seed_everything(args.seed)
    train_idx, val_idx = split_indices(t_u.shape[0])
    print(f"split (seed {args.seed}): train {train_idx.tolist()}  val {val_idx.tolist()}")
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    history = train_val_loop(args.val_epochs, torch.optim.SGD([params], lr=1e-2), params,
                             (t_un[train_idx], t_c[train_idx]), (t_un[val_idx], t_c[val_idx]))
    w, b = params.tolist()
    print(f"  w {w:.4f}  b {b:.4f}  (the book's numbers here depend on its random split)")
    return {"sgd_params": sgd_params.detach(), "sgd_losses": sgd_losses,
            "adam_params": adam_params.detach(), "adam_losses": adam_losses,
            "train_idx": train_idx, "val_idx": val_idx, "history": history,
            "split_params": params.detach()}


if __name__ == "__main__":
    run_cli(main)
