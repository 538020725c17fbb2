"""Chapter 4.3: tabular data, the white wine quality table.  python ch04_data/wine.py

Loads the 4,898 x 12 table, one-hot encodes the quality score with `scatter_`, standardizes
the 11 chemical columns, compares bad (<= 3), mid and good (>= 7) wines, and tries the
book's one-rule predictor: a wine is "good" when its total sulfur dioxide is below the mid
wines' mean. Writes runs/ch04/wine.png in the repository (quality histogram and the sulfur
rule).
"""
import argparse

import torch

from ch04_data.tables import check_codes, read_table
from common.data import add_data_dir_argument, book_file
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

WINE_CSV = "p1ch4/tabular-wine/winequality-white.csv"
TOTAL_SULFUR = 6            # column of "total sulfur dioxide"
QUALITY = 11                # the last column, the score 0..10 (this table: 3..9)
BOOK_THRESHOLD = 141.83     # the mid wines' mean total sulfur dioxide, as the book rounds it


def load_wine(path):
    """(N, 12) float32 tensor and the 12 column names from the semicolon-separated CSV.

    The book's np.loadtxt(path, delimiter=";", skiprows=1), with every cell checked (tables.py)
    and the quality scores whole numbers 0..9 (the one-hot has 10 columns)."""
    table, columns = read_table(path, ";", {TOTAL_SULFUR: "total sulfur dioxide",
                                           QUALITY: "quality"})
    if len(columns) != QUALITY + 1:
        raise DataError(f"{path}: {len(columns)} columns, the wine table has {QUALITY + 1}")
    check_codes(path, table[:, QUALITY], "quality", 0, 9)
    return torch.from_numpy(table), columns


def one_hot(target, n_classes=10):
    """(N,) integer labels -> (N, n_classes) one-hot rows, written in place by `scatter_`."""
    onehot = torch.zeros(target.shape[0], n_classes)
    onehot.scatter_(1, target.unsqueeze(1), 1.0)   # dim 1, index (N, 1), value 1 in each row
    return onehot


def standardize(data):
    """Each column to mean 0 and standard deviation 1 (the book divides by sqrt(var))."""
    return (data - data.mean(dim=0)) / data.var(dim=0).sqrt()


def group_means(data, target):
    """Per-column means of bad (<= 3), mid (4-6) and good (>= 7) wines, and the masks."""
    masks = {"bad": target <= 3, "mid": (target > 3) & (target < 7), "good": target >= 7}
    return {name: data[mask].mean(dim=0) for name, mask in masks.items()}, masks


def sulfur_rule(data, target, threshold=BOOK_THRESHOLD):
    """Predict "good" (quality > 5) when total sulfur dioxide < threshold; count the hits."""
    predicted = data[:, TOTAL_SULFUR] < threshold
    actual = target > 5
    n_predicted, n_actual = int(predicted.sum()), int(actual.sum())
    n_matches = int((predicted & actual).sum())
    return {"threshold": threshold, "predicted": n_predicted, "actual": n_actual,
            "matches": n_matches,                  # None: no wine predicted (or actually) good
            "precision": n_matches / n_predicted if n_predicted else None,
            "recall": n_matches / n_actual if n_actual else None}


def _ratio(value):
    return "n/a (nothing to divide by)" if value is None else f"{value:.3f}"


def plot_wine(target, sulfur, threshold, out_dir):
    """Quality histogram and total sulfur dioxide by quality with the rule's threshold."""
    qualities = sorted(set(target.tolist()))
    fig = new_figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    counts = torch.bincount(target, minlength=10)
    ax1.bar(range(10), counts.tolist(), color="tab:purple")
    ax1.set(title="White wines per quality score", xlabel="quality", ylabel="wines",
            xticks=range(10))
    ax2.boxplot([sulfur[target == q].numpy() for q in qualities], positions=qualities)
    ax2.axhline(threshold, color="tab:red", linestyle="--",
                label=f"threshold {threshold:.2f}: below -> predicted good")
    ax2.set(title="Total sulfur dioxide by quality", xlabel="quality", ylabel="mg/dm³")
    ax2.legend(loc="upper right")
    return save_figure(fig, out_dir / "wine.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--out", default=str(runs_dir("ch04")),
                   help="folder for wine.png (default: %(default)s)")
    args = p.parse_args(argv)

    path = book_file(WINE_CSV, args.data_dir, name="wine")
    out = check_writable(args.out, "--out")             # made by the first write, not before
    wineq, columns = load_wine(path)
    data, target = wineq[:, :-1], wineq[:, -1].long()   # 11 chemical columns, quality score
    print(f"table {tuple(wineq.shape)}, quality scores {target.min()}..{target.max()}")
    target_onehot = one_hot(target)
    print(f"one-hot target {tuple(target_onehot.shape)}, first row {target_onehot[0].tolist()}")
    data_normalized = standardize(data)

    means, masks = group_means(data, target)
    print(f"bad wines: {int(masks['bad'].sum())}, mid: {int(masks['mid'].sum())}, "
          f"good: {int(masks['good'].sum())}")
    print(f"{'':2} {'column':20} {'bad':>6} {'mid':>6} {'good':>6}")
    for i, (name, bad, mid, good) in enumerate(
            zip(columns[:-1], means["bad"], means["mid"], means["good"], strict=True)):
        print(f"{i:2} {name:20} {bad:6.2f} {mid:6.2f} {good:6.2f}")

    mid_sulfur = means["mid"][TOTAL_SULFUR].item()     # NaN when the table has no mid wine
    print(f"mid wines' mean total sulfur dioxide: {mid_sulfur:.2f} (the book uses "
          f"{BOOK_THRESHOLD})")
    rule = sulfur_rule(data, target, BOOK_THRESHOLD)
    print(f"sulfur < {rule['threshold']}: {rule['predicted']} predicted good, "
          f"{rule['actual']} actually good (quality > 5), {rule['matches']} both; "
          f"precision {_ratio(rule['precision'])}, recall {_ratio(rule['recall'])}")

    png = plot_wine(target, data[:, TOTAL_SULFUR], BOOK_THRESHOLD, out)
    print(f"wrote {png}")
    return {"wineq": wineq, "columns": columns, "target_onehot": target_onehot,
            "data_normalized": data_normalized, "means": means,
            "counts": {k: int(m.sum()) for k, m in masks.items()},
            "mid_sulfur": mid_sulfur, "rule": rule, "png": png}


if __name__ == "__main__":
    run_cli(main)
