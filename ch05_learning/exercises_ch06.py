"""Chapter 6 exercises (book section 6.5): the Tanh network's size and learning rate; wine.

    python ch05_learning/exercises_ch06.py               # 6.1 and 6.2, three PNGs
    python ch05_learning/exercises_ch06.py --exercise 2 --wine-epochs 2000

6.1: nn_fit.py's 1 -> N (Tanh) -> 1 network for N in 1, 13, 100 and SGD learning rates 1e-4,
1e-3, 1e-2 on the chapter's split; how far each output over t_u 20..90 departs from its best
straight line (a: which changes make it more linear); then a network made to overfit (b: 100
units, Adam, the input centred at the raw scale so a unit can switch between two readings).
6.2: the white wine table (chapter 4's reader; the built-in synthetic table, said loudly, when
the book's file is absent) through the same network with 11 inputs: time per epoch against
the thermometer's, samples and parameters, the loss, and a picture of the data.
"""
import argparse
import datetime
import time
from pathlib import Path

import torch
from torch import nn

from ch04_data.wine import WINE_CSV, load_wine
from ch05_learning.nn_fit import seq_model
from ch05_learning.nn_linear import batched_data
from ch05_learning.optimizers import split_indices
from common.data import add_data_dir_argument, data_root
from common.device import seed_everything
from common.errors import require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir, write_text

EXERCISES = (1, 2)
HIDDEN = (1, 13, 100)
LRS = (1e-4, 1e-3, 1e-2)
T_U_RANGE = (20.0, 90.0)                  # where the linearity is measured, t_u units
OVERFIT_HIDDEN, OVERFIT_LR = 100, 3e-2
WINE_HIDDEN, WINE_LR = 13, 1e-2
TIMING_EPOCHS = 100
WINE_ROWS = 4898
# The synthetic table's columns: name, mean, standard deviation (roughly the real table's).
WINE_COLUMNS = [("fixed acidity", 6.85, 0.84), ("volatile acidity", 0.28, 0.10),
                ("citric acid", 0.33, 0.12), ("residual sugar", 6.4, 5.1),
                ("chlorides", 0.046, 0.022), ("free sulfur dioxide", 35.3, 17.0),
                ("total sulfur dioxide", 138.4, 42.5), ("density", 0.994, 0.003),
                ("pH", 3.19, 0.15), ("sulphates", 0.49, 0.11), ("alcohol", 10.5, 1.2)]


def train_quietly(n_epochs, optimizer, model, loss_fn, train, val):
    """Chapter 6's training_loop (nn_linear.py) without its progress lines, for grids of runs:
    returns [(epoch, train loss, val loss)]."""
    (x_train, y_train), (x_val, y_val) = train, val
    history = []
    for epoch in range(1, n_epochs + 1):
        loss_train = loss_fn(model(x_train), y_train)
        with torch.no_grad():
            loss_val = loss_fn(model(x_val), y_val)
        optimizer.zero_grad()
        loss_train.backward()
        optimizer.step()
        history.append((epoch, loss_train.item(), loss_val.item()))
    return history


def line_departure(x, y):
    """RMS distance (y's unit) of y from its least-squares straight line over x: 0 for a line."""
    design = torch.stack([x.double(), torch.ones_like(x, dtype=torch.float64)], dim=1)
    coefficients = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution
    return float((design @ coefficients).flatten().sub(y.double()).pow(2).mean().sqrt())


def output_curve(model, scale, shift=0.0):
    """(t_u grid, the model's output there) over T_U_RANGE; the input is (t_u - shift) * scale."""
    t_u = torch.linspace(*T_U_RANGE, 281).unsqueeze(1)        # every 0.25 t_u
    with torch.no_grad():
        return t_u.flatten(), model((t_u - shift) * scale).flatten()


def did_not_fit(train_loss, targets):
    """True when the training loss is over half the targets' variance (the loss of predicting
    their mean): the network has not learned the trend."""
    return train_loss > 0.5 * float(targets.var(unbiased=False))


def grid_run(n_hidden, lr, n_epochs, seed):
    """One cell of 6.1a: nn_fit.py's network and split, trained with SGD at `lr`."""
    t_c, t_u = batched_data()
    seed_everything(seed)
    train_idx, val_idx = split_indices(t_u.shape[0])          # as nn_fit.main, then the model
    model = seq_model(n_hidden)
    t_un = 0.1 * t_u
    history = train_quietly(n_epochs, torch.optim.SGD(model.parameters(), lr=lr), model,
                            nn.MSELoss(), (t_un[train_idx], t_c[train_idx]),
                            (t_un[val_idx], t_c[val_idx]))
    x, y = output_curve(model, 0.1)
    return {"hidden": n_hidden, "lr": lr, "train": history[-1][1], "val": history[-1][2],
            "departure": line_departure(x, y), "range": float(y.max() - y.min()),
            "unfit": did_not_fit(history[-1][1], t_c[train_idx]),
            "curve": (x, y)}


def trend(rows, key):
    """{setting: mean departure over the cells that learned something}, setting by `key`."""
    means = {}
    for value in sorted({r[key] for r in rows}):
        cells = [r["departure"] for r in rows if r[key] == value and not r["unfit"]]
        means[value] = sum(cells) / len(cells) if cells else None
    return means


def overfit_run(n_epochs, seed, n_hidden=OVERFIT_HIDDEN, lr=OVERFIT_LR):
    """6.1b: many units, Adam, and the input centred on the training readings at t_u's own
    scale: each Tanh unit can then switch between two neighbouring readings."""
    t_c, t_u = batched_data()
    seed_everything(seed)
    train_idx, val_idx = split_indices(t_u.shape[0])
    model = seq_model(n_hidden)
    shift = float(t_u[train_idx].mean())
    x = t_u - shift
    history = train_quietly(n_epochs, torch.optim.Adam(model.parameters(), lr=lr), model,
                            nn.MSELoss(), (x[train_idx], t_c[train_idx]),
                            (x[val_idx], t_c[val_idx]))
    return {"hidden": n_hidden, "lr": lr, "history": history, "train": history[-1][1],
            "val": history[-1][2], "train_idx": train_idx, "val_idx": val_idx,
            "curve": output_curve(model, 1.0, shift)}


def exercise_1(n_epochs=5000, overfit_epochs=3000, seed=0):
    """6.1: the grid of sizes and learning rates (a), and the overfit run (b)."""
    rows = [grid_run(h, lr, n_epochs, seed) for h in HIDDEN for lr in LRS]
    return {"rows": rows, "by_hidden": trend(rows, "hidden"), "by_lr": trend(rows, "lr"),
            "overfit": overfit_run(overfit_epochs, seed), "epochs": n_epochs, "seed": seed}


def plot_exercise_1(answer, out):
    """linearity_grid.png (each cell's curve over the readings) and overfit.png."""
    t_c, t_u = batched_data()
    rows = answer["rows"]
    fig = new_figure(figsize=(11, 9))
    axes = fig.subplots(len(HIDDEN), len(LRS), sharex=True, sharey=True)
    for ax, row in zip(axes.flatten(), rows):
        ax.plot(t_u.flatten().numpy(), t_c.flatten().numpy(), "o", color="tab:blue", ms=4)
        ax.plot(row["curve"][0].numpy(), row["curve"][1].numpy(), "-", color="tab:orange")
        unfit = " (did not fit)" if row["unfit"] else ""
        ax.set_title(f"{units(row['hidden'])}, lr {row['lr']:g}: {row['departure']:.2f} °C "
                     f"from a line{unfit}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Network output over t_u after {answer['epochs']} SGD epochs; "
                 "distance = RMS departure from the best straight line")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.05, top=0.91, wspace=0.08, hspace=0.25)
    grid_png = save_figure(fig, out / "linearity_grid.png", dpi=80, tight_layout=False)

    o = answer["overfit"]
    fig = new_figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(t_u[o["train_idx"]].flatten().numpy(), t_c[o["train_idx"]].flatten().numpy(), "o",
             label="training readings")
    ax1.plot(t_u[o["val_idx"]].flatten().numpy(), t_c[o["val_idx"]].flatten().numpy(), "x",
             color="k", ms=9, label="held out")
    ax1.plot(o["curve"][0].numpy(), o["curve"][1].numpy(), "-", color="tab:red",
             label=f"{o['hidden']} units, Adam lr {o['lr']:g}")
    ax1.set(xlabel="t_u (unknown unit)", ylabel="t_c (Celsius)", title="An overfit network")
    ax1.legend()
    ax1.grid(alpha=0.3)
    epochs, train, val = zip(*o["history"])
    ax2.semilogy(epochs, train, label="training loss")
    ax2.semilogy(epochs, val, label="validation loss")
    ax2.set(xlabel="epoch", ylabel="MSE (°C²)", title="Training and validation loss")
    ax2.legend()
    ax2.grid(alpha=0.3, which="both")
    return grid_png, save_figure(fig, out / "overfit.png")


def write_synthetic_wine(path, n_rows=None, seed=0):
    """A wine-like table in the book's CSV format (";" separated, quoted header): the chemical
    columns drawn around the real table's means, quality a noisy function of a few of them, as
    whole scores 3..9; WINE_ROWS rows unless told. For runs without the book's file; says
    nothing about real wine."""
    n_rows = n_rows or WINE_ROWS
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_rows, len(WINE_COLUMNS), generator=g)
    values = torch.tensor([m for _, m, _ in WINE_COLUMNS]) + z * torch.tensor(
        [s for _, _, s in WINE_COLUMNS])
    values = values.abs()                                       # no negative concentrations
    names = [n for n, _, _ in WINE_COLUMNS]
    column = {n: z[:, i] for i, n in enumerate(names)}         # standardized draws
    score = (5.9 + 0.45 * column["alcohol"] - 0.25 * column["volatile acidity"]
             - 0.15 * column["chlorides"] + 0.6 * torch.randn(n_rows, generator=g))
    quality = score.round().clamp(3, 9)
    lines = [";".join(f'"{n}"' for n in [*names, "quality"])]
    lines += [";".join(f"{v:.5g}" for v in row.tolist()) + f";{int(q)}"
              for row, q in zip(values, quality)]
    return write_text(path, "\n".join(lines) + "\n", "synthetic wine table")


def wine_model(n_features, n_hidden=WINE_HIDDEN):
    """nn_fit.py's network with `n_features` inputs: n_features -> n_hidden (Tanh) -> 1."""
    return nn.Sequential(nn.Linear(n_features, n_hidden), nn.Tanh(), nn.Linear(n_hidden, 1))


def seconds_per_epoch(model, x, y, n_epochs=None, lr=1e-3):
    """Wall time of one full-batch epoch (forward, backward, step), after one warm-up epoch,
    averaged over `n_epochs` (TIMING_EPOCHS)."""
    n_epochs = n_epochs or TIMING_EPOCHS
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train_quietly(1, optimizer, model, nn.MSELoss(), (x, y), (x[:1], y[:1]))
    start = time.perf_counter()
    train_quietly(n_epochs, optimizer, model, nn.MSELoss(), (x, y), (x[:1], y[:1]))
    return (time.perf_counter() - start) / n_epochs


def n_parameters(model):
    return sum(p.numel() for p in model.parameters())


def exercise_2(table, columns, n_epochs=500, seed=0):
    """6.2: a network with one input per chemical column, trained to predict the quality."""
    x, y = table[:, :-1], table[:, -1:]                       # (N, 11) features, (N, 1) score
    train_idx, val_idx = split_indices(x.shape[0], 0.2, torch.Generator().manual_seed(seed))
    mean, std = x[train_idx].mean(dim=0), x[train_idx].std(dim=0)
    x = (x - mean) / std                                      # the training rows' statistics
    seed_everything(seed)
    model = wine_model(x.shape[1])
    history = train_quietly(n_epochs, torch.optim.SGD(model.parameters(), lr=WINE_LR), model,
                            nn.MSELoss(), (x[train_idx], y[train_idx]),
                            (x[val_idx], y[val_idx]))
    with torch.no_grad():
        predicted = model(x[val_idx]).flatten()
    baseline = float(((y[val_idx] - y[train_idx].mean()) ** 2).mean())

    t_c, t_u = batched_data()
    thermometer_train = split_indices(t_u.shape[0], 0.2, torch.Generator().manual_seed(seed))[0]
    timings = {}
    for name, net, xs, ys in (
            ("thermometer", seq_model(WINE_HIDDEN), 0.1 * t_u[thermometer_train],
             t_c[thermometer_train]),
            ("wine", wine_model(x.shape[1]), x[train_idx], y[train_idx]),
            ("wine, 100 units", wine_model(x.shape[1], 100), x[train_idx], y[train_idx])):
        timings[name] = {"samples": xs.shape[0], "parameters": n_parameters(net),
                         "seconds": seconds_per_epoch(net, xs, ys)}
    correlations = [float(torch.corrcoef(torch.stack([table[:, i], table[:, -1]]))[0, 1])
                    for i in range(x.shape[1])]
    return {"columns": columns, "rows": table.shape[0], "features": x.shape[1],
            "history": history, "baseline": baseline, "train_idx": train_idx,
            "val_idx": val_idx, "predicted": predicted, "true": y[val_idx].flatten(),
            "timings": timings, "correlations": correlations, "table": table,
            "parameters": n_parameters(model)}


def plot_wine(answer, path):
    """Two most quality-correlated columns coloured by quality; predicted vs true; the loss."""
    table, columns, corr = answer["table"], answer["columns"], answer["correlations"]
    first, second = sorted(range(len(corr)), key=lambda i: -abs(corr[i]))[:2]
    fig = new_figure(figsize=(15, 4.5))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    dots = ax1.scatter(table[:, first].numpy(), table[:, second].numpy(),
                       c=table[:, -1].numpy(), cmap="viridis", s=4, alpha=0.6)
    fig.colorbar(dots, ax=ax1, label="quality")
    for axis, i in ((ax1.set_xlim, first), (ax1.set_ylim, second)):     # outliers off-screen
        axis(*torch.quantile(table[:, i], torch.tensor([0.002, 0.998])).tolist())
    ax1.set(xlabel=f"{columns[first]} (r {corr[first]:+.2f} with quality)",
            ylabel=f"{columns[second]} (r {corr[second]:+.2f})",
            title="The two columns most correlated with quality")
    true, predicted = answer["true"], answer["predicted"]
    scores = sorted(set(true.long().tolist()))
    ax2.boxplot([predicted[true.long() == s].numpy() for s in scores], positions=scores)
    ax2.plot(scores, scores, "--", color="tab:red", label="perfect")
    ax2.set(xlabel="true quality (validation wines)", ylabel="predicted quality",
            title="Predicted against true")
    ax2.legend()
    epochs, train, val = zip(*answer["history"])
    ax3.semilogy(epochs, train, label="training loss")
    ax3.semilogy(epochs, val, label="validation loss")
    ax3.axhline(answer["baseline"], color="gray", linestyle=":",
                label=f"predicting the mean: {answer['baseline']:.3f}")
    ax3.set(xlabel="epoch", ylabel="MSE (quality points²)", title="Loss")
    ax3.legend()
    ax3.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def print_exercise_1(a, pngs):
    print(f"Exercise 6.1: the 1 -> N (Tanh) -> 1 network, {a['epochs']} SGD epochs on 0.1 * t_u "
          f"(seed {a['seed']})")
    print(f"  {'units':>5} {'lr':>7} {'train':>8} {'val':>8}  {'from a line':>11}  output range")
    for r in a["rows"]:
        unfit = "  did not fit: loss over half the readings' variance" if r["unfit"] else ""
        print(f"  {r['hidden']:5d} {r['lr']:7g} {r['train']:8.3f} {r['val']:8.3f}  "
              f"{r['departure']:8.2f} °C  {r['range']:7.1f} °C{unfit}")

    def summary(means, name):
        return ", ".join(f"{name(k)}: {'-' if v is None else f'{v:.2f} °C'}"
                         for k, v in means.items())

    by_hidden = {k: v for k, v in a["by_hidden"].items() if v is not None}
    by_lr = {k: v for k, v in a["by_lr"].items() if v is not None}
    print("  a. which changes make the output more linear? (mean departure from a line, cells "
          "that learned something)")
    print(f"     by size: {summary(a['by_hidden'], units)}")
    print(f"     by learning rate: {summary(a['by_lr'], lambda lr: f'lr {lr:g}')}")
    learned = [r for r in a["rows"] if not r["unfit"]]
    unfit = [describe(r) for r in a["rows"] if r["unfit"]]
    if len(by_hidden) > 1 and len(by_lr) > 1:
        fewest, most = min(by_hidden), max(by_hidden)
        low, high = min(by_lr), max(by_lr)
        size = compare_word(by_hidden[fewest], by_hidden[most], "fewer", "more")
        rate = compare_word(by_lr[low], by_lr[high], "a smaller", "a larger")
        straightest = min(learned, key=lambda r: r["departure"])
        print(f"     verdict: {size} units and {rate} learning rate give a straighter output "
              f"here; the most linear cell that learned: {describe(straightest)}"
              + (f"; left out, they did not fit: {', '.join(unfit)}" if unfit else ""))
    else:
        which = ", ".join(describe(r) for r in learned) or "none"
        print(f"     verdict: too few cells learned the trend in {a['epochs']} epochs to compare "
              f"(learned: {which}); give more --epochs")
    o = a["overfit"]
    shift = float(batched_data()[1][o["train_idx"]].mean())
    print(f"  b. can it be made to overfit? {units(o['hidden'])}, Adam lr {o['lr']:g}, "
          f"{len(o['history'])} epochs, input t_u - {shift:.1f}: training loss {o['train']:.2g}, "
          f"validation {o['val']:.2f}")
    if o["train"] < 0.1 * o["val"]:
        print("     verdict: yes, clearly: it threads through the nine training readings, noise "
              "included, and misses the held-out ones (see overfit.png)")
    else:
        print("     verdict: not clearly at this size: more --overfit-epochs (the training loss "
              "has not reached the noise-free fit yet)")
    for png in pngs:
        print(f"  wrote {png}")


def compare_word(fewer_value, more_value, fewer, more):
    """`fewer` when the first setting's departure is smaller, else `more`."""
    return fewer if fewer_value < more_value else more


def units(n):
    return f"{n} unit{'' if n == 1 else 's'}"


def describe(row):
    return f"{units(row['hidden'])}, lr {row['lr']:g} ({row['departure']:.2f} °C)"


def print_exercise_2(a, source, png):
    t = a["timings"]
    print(f"Exercise 6.2: the wine table ({source}): {a['rows']:,} rows, {a['features']} inputs "
          f"-> {WINE_HIDDEN} (Tanh) -> 1, predicting the quality score")
    print(f"  a. time per epoch (full batch, forward + backward + step, {TIMING_EPOCHS} epochs "
          "each):")
    for name, row in t.items():
        print(f"     {name:16} {row['samples']:6,} samples x {row['parameters']:5,} parameters "
              f"= {row['samples'] * row['parameters']:>10,}   {row['seconds'] * 1e6:9.0f} µs")
    work = (t["wine"]["samples"] * t["wine"]["parameters"]
            / (t["thermometer"]["samples"] * t["thermometer"]["parameters"]))
    slower = t["wine"]["seconds"] / t["thermometer"]["seconds"]
    print(f"     the wine net's epoch is {slower:.1f}x the thermometer's, for {work:,.0f}x the "
          "samples x parameters")
    fixed = t["thermometer"]["seconds"] * 1e6
    wide = t["wine, 100 units"]["seconds"] / t["wine"]["seconds"]
    wide_work = t["wine, 100 units"]["parameters"] / t["wine"]["parameters"]
    print("  b. what drives it: the arithmetic grows with samples x parameters (each sample "
          "meets every weight, forward and backward), but a small epoch is mostly fixed cost "
          f"(Python and one call per operation: the thermometer's {fixed:.0f} µs is nearly all "
          f"of it); 100 units instead of {WINE_HIDDEN}: {wide_work:.1f}x the parameters, "
          f"{wide:.1f}x the time")
    history = a["history"]
    last = history[-1]
    falls = "yes" if last[1] < history[0][1] else "no"
    better = "below" if last[2] < a["baseline"] else "not below"
    print(f"  c. does the loss fall? {falls}: training {history[0][1]:.3f} -> {last[1]:.3f} in "
          f"{len(history)} epochs; validation {last[2]:.3f}, {better} the {a['baseline']:.3f} of "
          "predicting the training mean for every wine")
    corr = a["correlations"]
    top = sorted(range(len(corr)), key=lambda i: -abs(corr[i]))[:3]
    named = ", ".join(f"{a['columns'][i]} {corr[i]:+.2f}" for i in top)
    print(f"  d. how to graph it: eleven columns do not fit one plot; pick the columns that "
          f"matter (correlation with quality: {named}) and plot two of them coloured by "
          "quality, and plot predicted against true quality for the held-out wines; "
          f"wrote {png}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="exercise number, repeatable (default: all)")
    p.add_argument("--epochs", type=int, default=5000, help="6.1a: SGD epochs per cell "
                                                            "(default: 5000, as nn_fit.py)")
    p.add_argument("--overfit-epochs", type=int, default=3000, help="6.1b (default: 3000)")
    p.add_argument("--wine-epochs", type=int, default=500, help="6.2 (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="splits and inits (default: 0)")
    p.add_argument("--synthetic", action="store_true",
                   help="6.2: use the built-in synthetic wine table even if the book's is there")
    p.add_argument("--out", default=None, help="run folder (default: runs/ch05/exercises_ch06/"
                                               "<time> in the repository)")
    add_data_dir_argument(p)
    args = p.parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--overfit-epochs", args.overfit_epochs),
                        ("--wine-epochs", args.wine_epochs)):
        require_at_least(flag, value, 1)
    exercises = sorted(set(args.exercise or EXERCISES))
    out = Path(args.out or runs_dir("ch05") / "exercises_ch06"
               / f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}")
    check_writable(out, "--out")                                 # before the training

    answers = {}
    if 1 in exercises:
        answers[1] = exercise_1(args.epochs, args.overfit_epochs, args.seed)
        answers[1]["pngs"] = plot_exercise_1(answers[1], out)
        print_exercise_1(answers[1], answers[1]["pngs"])
    if 2 in exercises:
        path = data_root(args.data_dir) / WINE_CSV
        if args.synthetic or not path.is_file():
            why = "--synthetic" if args.synthetic else f"{path} is absent"
            print(f"*** 6.2 runs on the built-in SYNTHETIC wine table ({why}); for the book's: "
                  "python -m common.data download wine ***")
            path = write_synthetic_wine(out / "synthetic-winequality-white.csv", seed=args.seed)
            source = "synthetic"
        else:
            source = str(path)
        table, columns = load_wine(path)
        answers[2] = exercise_2(table, columns, args.wine_epochs, args.seed)
        answers[2]["synthetic"] = source == "synthetic"
        answers[2]["png"] = plot_wine(answers[2], out / "wine_network.png")
        print_exercise_2(answers[2], source, answers[2]["png"])
    return answers


if __name__ == "__main__":
    run_cli(main)
