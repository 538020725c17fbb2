"""Chapter 12: why F1 combines precision and recall, compared with simpler scores.

    python ch10_luna/f1_plot.py                   # writes runs/ch10/f1_vs_other_scores.png

Contour plots over precision p and recall r in [0, 1] of F1 = 2pr / (p + r) (the harmonic
mean), the average (p + r) / 2, min(p, r), the product p * r and sqrt(p * r). The last panel
follows the classifier that flags every candidate (recall 1, precision = the share of nodules):
the average still gives it 0.5, while F1 and min fall towards 0 with the precision. The book's
notebook drew sqrt(F1) to spread the grey levels; here every panel shares the same 0..1 scale.
"""
import argparse
from pathlib import Path

import numpy as np

from common.errors import run_cli
from common.figures import new_figure, save_figure
from common.files import runs_dir

DEFAULT_OUT = str(runs_dir("ch10"))
NODULE_SHARE = 1_351 / 551_065          # LUNA16's candidates.csv: one nodule per ~408 candidates


def f1(p, r):
    """Harmonic mean of precision and recall; 0 where both are 0 (no 0/0 warning)."""
    p, r = np.asarray(p, dtype=float), np.asarray(r, dtype=float)
    total = p + r
    return np.divide(2 * p * r, total, out=np.zeros(np.broadcast(p, r).shape), where=total > 0)


def scores(p, r):
    """Each score of the book's comparison on arrays of precision and recall."""
    p, r = np.asarray(p, dtype=float), np.asarray(r, dtype=float)
    return {"f1": f1(p, r), "avg": (p + r) / 2, "min": np.minimum(p, r), "mult": p * r,
            "sqrt": np.sqrt(p * r)}


def plot_scores(n=101):
    """The figure: one contour panel per score, then the flag-everything classifier's line."""

    grid = np.linspace(0.0, 1.0, n)
    p, r = np.meshgrid(grid, grid)                   # x: precision, y: recall
    levels = np.linspace(0.0, 1.0, 11)
    fig = new_figure(figsize=(13, 8.5), layout="constrained")
    axes = fig.subplots(2, 3)
    titles = {"f1": "F1 = 2pr / (p + r)", "avg": "avg = (p + r) / 2", "min": "min(p, r)",
              "mult": "mult = p * r", "sqrt": "sqrt(p * r)"}
    for ax, (name, z) in zip(axes.flat, scores(p, r).items(), strict=False):
        filled = ax.contourf(p, r, z, levels=levels, cmap="gray", vmin=0, vmax=1)
        lines = ax.contour(p, r, z, levels=levels[1:-1], colors="tab:red", linewidths=0.6)
        ax.clabel(lines, fmt="%.1f", fontsize=7)
        ax.set_title(titles[name])
        ax.set_xlabel("precision")
        ax.set_ylabel("recall")
        ax.set_aspect("equal")
    fig.colorbar(filled, ax=axes.ravel().tolist(), shrink=0.5, label="score")

    ax = axes.flat[5]
    precision = np.logspace(-3, 0, 200)               # share of nodules among all candidates
    for (name, z), style in zip(scores(precision, np.ones_like(precision)).items(),
                                ("-", "-", "-", "--", "-"), strict=True):
        ax.plot(precision, z, style, label=name)
    ax.axvline(NODULE_SHARE, color="gray", linewidth=0.8, linestyle=":")
    ax.text(NODULE_SHARE * 1.15, 0.85, "LUNA16", fontsize=8, color="gray")
    ax.set_xscale("log")
    ax.set_aspect("auto")
    ax.set_title("flag everything: recall 1")
    ax.set_xlabel("precision (log)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    # The book's point in numbers: flagging every LUNA candidate as a nodule.
    print(f"flag every candidate: precision {NODULE_SHARE:.5f} (1,351 nodules in 551,065), "
          "recall 1")
    for name, value in scores(NODULE_SHARE, 1.0).items():
        print(f"  {name:4s} = {float(value):.4f}")
    fig = plot_scores()
    path = save_figure(fig, Path(args.out) / "f1_vs_other_scores.png", dpi=90,
                       tight_layout=False)                 # constrained layout already
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
