"""Chapter 5 exercise (book section 5.7): a quadratic model of the thermometer.

    python ch05_learning/exercises_ch05.py               # writes quadratic_vs_linear.png
    python ch05_learning/exercises_ch05.py --epochs 20000 --seed 1

5.1: `w2 * t_u ** 2 + w1 * t_u + b` on 0.1 * t_u, trained by chapter 5's train/validation loop
written out with the model as a parameter (train_val_loop below), beside the linear model on
the same split (optimizers.split_indices). a: what had to change (the model, the parameters'
start, the learning rate: the book's 1e-2 and a ladder of smaller ones tried); b: what did not
(the loop); c: the training loss of both, after the same SGD epochs and at the minimum (Adam,
checked against least squares); d: validation on the held-out readings and leave-one-out over
all eleven, and a PNG of both fits.
"""
import argparse
import datetime
import math
from pathlib import Path

import torch

from ch05_learning.grad_descent import first_nonfinite_epoch
from ch05_learning.optimizers import split_indices
from ch05_learning.thermometer import loss_fn, model, plot_fits, thermometer_data
from common.device import seed_everything
from common.errors import require_at_least, run_cli
from common.files import check_writable, runs_dir

EXERCISES = (1,)
BOOK_LR = 1e-2                      # chapter 5's SGD learning rate on 0.1 * t_u
LR_LADDER = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4)
ADAM_LR = 1e-1                      # chapter 5's Adam learning rate
LINEAR_START, QUADRATIC_START = (1.0, 0.0), (0.0, 1.0, 0.0)   # the same line at the start


def quadratic_model(t_u, w2, w1, b):
    """The exercise's model: t_c ~ w2 * t_u**2 + w1 * t_u + b."""
    return w2 * t_u ** 2 + w1 * t_u + b


def train_val_loop(n_epochs, optimizer, model_fn, params, train, val):
    """Chapter 5's train_val_loop with the model as a parameter; stops at the first training
    loss that is not finite (a diverging run has nothing more to show). Returns
    [(epoch, train loss, val loss)]."""
    (train_t_u, train_t_c), (val_t_u, val_t_c) = train, val
    history = []
    for epoch in range(1, n_epochs + 1):
        train_loss = loss_fn(model_fn(train_t_u, *params), train_t_c)
        with torch.no_grad():
            val_loss = loss_fn(model_fn(val_t_u, *params), val_t_c)
        history.append((epoch, train_loss.item(), val_loss.item()))
        if not math.isfinite(train_loss.item()):
            break
        optimizer.zero_grad()
        train_loss.backward()
        optimizer.step()
    return history


def fit(model_fn, start, lr, n_epochs, train, val, adam=False):
    """(params, history) of one run from `start` with SGD (or Adam) at `lr`."""
    params = torch.tensor(start, requires_grad=True)
    optimizer = (torch.optim.Adam if adam else torch.optim.SGD)([params], lr=lr)
    history = train_val_loop(n_epochs, optimizer, model_fn, params, train, val)
    return params.detach(), history


def least_squares(x, y, degree):
    """Coefficients (highest power first) of the polynomial of `degree` with the least squared
    error on (x, y), in closed form (float64): the minimum a training loop approaches."""
    design = torch.stack([x.double() ** k for k in range(degree, -1, -1)], dim=1)
    return torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution.flatten()


def polynomial(x, coefficients):
    """Evaluate coefficients (highest power first) at x."""
    return sum(c * x.double() ** k for k, c in zip(range(len(coefficients) - 1, -1, -1),
                                                    coefficients))


def leave_one_out(x, y, degree):
    """Squared error on each point of the least-squares fit to all the others."""
    errors = []
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        coefficients = least_squares(x[keep], y[keep], degree)
        errors.append(float((polynomial(x[i:i + 1], coefficients) - y[i]) ** 2))
    return errors


def initial_gradients(model_fn, start, t_u, t_c):
    """dL/dparams at the start: how unevenly one learning rate meets the parameters."""
    params = torch.tensor(start, requires_grad=True)
    loss_fn(model_fn(t_u, *params), t_c).backward()
    return params.grad


def exercise_1(n_epochs=5000, seed=0):
    """5.1: the linear and the quadratic model on the chapter's split; see the module doc."""
    t_c, t_u = thermometer_data()
    t_un = 0.1 * t_u
    seed_everything(seed)
    train_idx, val_idx = split_indices(t_u.shape[0])
    train, val = (t_un[train_idx], t_c[train_idx]), (t_un[val_idx], t_c[val_idx])

    linear, linear_history = fit(model, LINEAR_START, BOOK_LR, n_epochs, train, val)
    ladder = {}
    for lr in LR_LADDER:                        # the book's lr first, then smaller ones
        params, history = fit(quadratic_model, QUADRATIC_START, lr, n_epochs, train, val)
        diverged = first_nonfinite_epoch([h[1] for h in history])
        ladder[lr] = diverged
        if diverged is None:
            quadratic, quadratic_history, quadratic_lr = params, history, lr
            break
    else:
        quadratic, quadratic_history, quadratic_lr = None, [], None
    adam = {name: fit(fn, start, ADAM_LR, n_epochs, train, val, adam=True)
            for name, fn, start in (("linear", model, LINEAR_START),
                                    ("quadratic", quadratic_model, QUADRATIC_START))}
    minimum = {name: least_squares(*train, degree) for name, degree in (("linear", 1),
                                                                        ("quadratic", 2))}
    minimum_loss = {name: float(((polynomial(train[0], c) - train[1]) ** 2).mean())
                    for name, c in minimum.items()}
    loo = {name: leave_one_out(t_un, t_c, degree) for name, degree in (("linear", 1),
                                                                       ("quadratic", 2))}
    return {"train_idx": train_idx, "val_idx": val_idx, "epochs": n_epochs,
            "gradients": initial_gradients(quadratic_model, QUADRATIC_START, *train).tolist(),
            "ladder": ladder, "quadratic_lr": quadratic_lr,
            "sgd": {"linear": (linear, linear_history),
                    "quadratic": (quadratic, quadratic_history)},
            "adam": adam, "minimum": minimum, "minimum_loss": minimum_loss, "loo": loo}


def compare(a, b, lower="lower", higher="higher"):
    """`lower` when a < b, `higher` when a > b, else `the same`."""
    return lower if a < b else higher if a > b else "the same"


def plot_both(answer, path):
    """The readings, the held-out ones marked, and the fitted curves over t_u 20..90."""
    t_c, t_u = thermometer_data()
    x = torch.arange(20.0, 91.0)
    curves = [(f"linear, SGD lr {BOOK_LR:g}", x, model(0.1 * x, *answer["sgd"]["linear"][0]))]
    if answer["quadratic_lr"] is not None:
        curves.append((f"quadratic, SGD lr {answer['quadratic_lr']:g}", x,
                       quadratic_model(0.1 * x, *answer["sgd"]["quadratic"][0])))
    curves += [(f"linear, Adam lr {ADAM_LR:g}", x, model(0.1 * x, *answer["adam"]["linear"][0])),
               (f"quadratic, Adam lr {ADAM_LR:g}", x,
                quadratic_model(0.1 * x, *answer["adam"]["quadratic"][0]))]
    val_idx = answer["val_idx"]
    return plot_fits(path, t_u, t_c, curves=curves,
                     points=[("held out (validation)", t_u[val_idx], t_c[val_idx])],
                     title=f"Linear vs quadratic, {answer['epochs']} epochs")


def print_exercise_1(a, png):
    print("Exercise 5.1: t_c = w2 * t_u**2 + w1 * t_u + b on 0.1 * t_u (chapter 5's split: "
          f"train {a['train_idx'].tolist()}, validation {a['val_idx'].tolist()})")
    tried = "; ".join(f"lr {lr:g}: " + (f"loss not finite at epoch {e}" if e else "stable")
                      for lr, e in a["ladder"].items())
    g2, g1, g0 = (abs(g) for g in a["gradients"])
    print("  a. what had to change: the model function (quadratic_model) and the parameters, "
          f"three now, started at {QUADRATIC_START} (the linear model's start line, w2 = 0); "
          f"and the learning rate: {tried}. At the start |dL/dw2| : |dL/dw1| : |dL/db| = "
          f"{g2 / g0:.0f} : {g1 / g0:.0f} : 1, so a step that suits b throws w2 far")
    print("  b. what did not change: the loop (loss_fn, zero_grad, backward, step, the "
          "validation loss under no_grad), the loss and the data; train_val_loop takes the "
          "model as a parameter and runs both models unchanged")
    lin_h, quad_h = a["sgd"]["linear"][1], a["sgd"]["quadratic"][1]
    lin_adam_h, quad_adam_h = a["adam"]["linear"][1], a["adam"]["quadratic"][1]
    n = a["epochs"]
    rows = [(f"SGD, {n} epochs", lin_h[-1], quad_h[-1] if quad_h else None),
            (f"Adam lr {ADAM_LR:g}, {n} epochs", lin_adam_h[-1], quad_adam_h[-1])]
    print("  c. the training loss after training, higher or lower?")
    header = f"     {'':45}{'linear':>8}  {'quadratic':>9}   quadratic is"
    print(header)
    for label, lin_row, quad_row in rows:
        if quad_row is None:
            print(f"     {label:45}{lin_row[1]:8.4f}   diverged at every lr tried")
            continue
        print(f"     {label:45}{lin_row[1]:8.4f}  {quad_row[1]:9.4f}   "
              f"{compare(quad_row[1], lin_row[1])}")
    m = a["minimum_loss"]
    print(f"     {'the minimum (least squares, closed form)':45}{m['linear']:8.4f}  "
          f"{m['quadratic']:9.4f}   {compare(m['quadratic'], m['linear'])}: the quadratic "
          "holds every line (w2 = 0), so at its minimum it is never higher")
    gap = (a["adam"]["quadratic"][0].double() - a["minimum"]["quadratic"]).abs().max()
    print(f"     (Adam's quadratic is within {gap:.1e} of the least-squares coefficients "
          f"{[round(c, 4) for c in a['minimum']['quadratic'].tolist()]})")
    print(f"  d. better or worse? validation loss on the {len(a['val_idx'])} held-out readings "
          "and leave-one-out over all 11:")
    print(header)
    val_rows = [(f"SGD, {n} epochs", lin_h[-1][2], quad_h[-1][2] if quad_h else None),
                (f"Adam lr {ADAM_LR:g}", lin_adam_h[-1][2], quad_adam_h[-1][2])]
    for label, lin_val, quad_val in val_rows:
        if quad_val is not None:
            print(f"     {label:45}{lin_val:8.4f}  {quad_val:9.4f}   "
                  f"{compare(quad_val, lin_val, 'better', 'worse')}")
    loo_lin, loo_quad = (sum(v) / len(v) for v in (a["loo"]["linear"], a["loo"]["quadratic"]))
    wins = sum(q < lin for q, lin in zip(a["loo"]["quadratic"], a["loo"]["linear"]))
    print(f"     {'leave-one-out mean, least squares':45}{loo_lin:8.4f}  {loo_quad:9.4f}   "
          f"{compare(loo_quad, loo_lin, 'better', 'worse')} (closer on {wins} of 11 readings)")
    converged_val = compare(quad_adam_h[-1][2], lin_adam_h[-1][2], "better", "worse")
    loo_verdict = compare(loo_quad, loo_lin, "better", "worse")
    if converged_val == loo_verdict:
        verdict = (f"{loo_verdict}, by both measures; with eleven readings and errors of "
                   f"{min(a['loo']['linear']):.1f}..{max(a['loo']['linear']):.1f} per reading "
                   "for the line, a small difference")
    else:
        verdict = (f"no clear answer: {converged_val} on the held-out readings, {loo_verdict} "
                   "in leave-one-out")
    print(f"     verdict: the converged quadratic is {verdict}; the lower training loss alone "
          f"does not say it (see {png.name})")
    print(f"  wrote {png}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="exercise number (default: all, which is 1)")
    p.add_argument("--epochs", type=int, default=5000, help="epochs of every run (default: 5000)")
    p.add_argument("--seed", type=int, default=0, help="the split (default: 0)")
    p.add_argument("--out", default=None, help="run folder (default: runs/ch05/exercises_ch05/"
                                               "<time> in the repository)")
    args = p.parse_args(argv)
    require_at_least("--epochs", args.epochs, 1)
    out = Path(args.out or runs_dir("ch05") / "exercises_ch05"
               / f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}")
    check_writable(out, "--out")                                 # before the training
    answer = exercise_1(args.epochs, args.seed)
    answer["png"] = plot_both(answer, out / "quadratic_vs_linear.png")
    print_exercise_1(answer, answer["png"])
    return {1: answer}


if __name__ == "__main__":
    run_cli(main)
