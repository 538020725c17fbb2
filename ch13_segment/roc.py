"""Chapter 14: ROC curves and AUC, and the diameter-only baseline for malignancy.

    python ch13_segment/roc.py                    # the book's annotations_with_malignancy.csv
    python ch13_segment/roc.py --synthetic        # the built-in sample's

The command scores the validation nodules (every 10th series of the CSV) by diameter alone,
prints the AUC and the ROC points nearest the book's two thresholds, and writes
runs/ch14/diameter_roc.png. The book's points on the real annotations: 10.55 mm -> FPR 0.01,
TPR 0.56; 5.42 mm -> FPR 0.43, TPR 0.96.

    fpr, tpr, thresholds = roc_curve(probs, labels)    # the book's 100 thresholds, 1 -> 0
    trapezoid_auc(fpr, tpr)                             # what the book logs
    exact_auc(probs, labels)                            # every distinct score a threshold
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from ch10_luna.dsets import split_by_series
from common.data import add_data_dir_argument, book_file
from common.errors import run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

N_THRESHOLDS = 100              # torch.linspace's old default, which the book relied on


def _rates(predicted, labels):
    """(TPR, FPR) per threshold row of a boolean (T, N) prediction; 0 where a class is absent."""
    labels = torch.as_tensor(labels).bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    tp = (predicted & labels[None]).sum(1).double()
    fp = (predicted & ~labels[None]).sum(1).double()
    return tp / max(n_pos, 1), fp / max(n_neg, 1)


def roc_curve(scores, labels, thresholds=None):
    """(fpr, tpr, thresholds): positive means score >= threshold; thresholds default 1 -> 0."""
    scores = torch.as_tensor(scores).double()
    if thresholds is None:
        thresholds = torch.linspace(1, 0, N_THRESHOLDS, dtype=torch.float64)
    thresholds = torch.as_tensor(thresholds).double()
    tpr, fpr = _rates(scores[None] >= thresholds[:, None], labels)
    return fpr, tpr, thresholds


def trapezoid_auc(fpr, tpr):
    """Area under the piecewise-linear curve through the points, in threshold order."""
    fpr, tpr = torch.as_tensor(fpr).double(), torch.as_tensor(tpr).double()
    return float(((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2).sum())


def exact_auc(scores, labels):
    """AUC with every distinct score as a threshold (ties count half): scikit-learn's value.

    0.0 when one class is absent (the AUC is undefined there; scikit-learn raises).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # distinct thresholds
    tp = np.r_[0, np.cumsum(labels)[last_of_run]]
    fp = np.r_[0, np.cumsum(~labels)[last_of_run]]
    if tp[-1] == 0 or fp[-1] == 0:
        return 0.0
    return trapezoid_auc(fp / fp[-1], tp / tp[-1])


def diameter_roc(diameters, is_malignant, n=N_THRESHOLDS):
    """The baseline: malignant if diameter >= threshold, thresholds linspace(max, min, n)."""
    diameters = torch.as_tensor(diameters, dtype=torch.float64)
    thresholds = torch.linspace(float(diameters.max()), float(diameters.min()), n,
                                dtype=torch.float64)
    return roc_curve(diameters, is_malignant, thresholds)


def point_near(fpr, tpr, thresholds, value):
    """(threshold, fpr, tpr) of the threshold closest to `value`."""
    i = int(torch.argmin((torch.as_tensor(thresholds) - value).abs()))
    return float(thresholds[i]), float(fpr[i]), float(tpr[i])


def roc_figure(fpr, tpr, scores, labels, title="", baseline=None,
               class_names=("negative", "positive")):
    """ROC curve (with an optional (fpr, tpr, label) baseline) beside per-class histograms."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    fig = new_figure(figsize=(10, 4.5))
    ax_roc, ax_hist = fig.subplots(1, 2)
    auc = trapezoid_auc(fpr, tpr)
    ax_roc.plot(fpr, tpr, "o-", ms=2.5, label=f"{title or 'model'} (AUC {auc:.3f})")
    if baseline is not None:
        b_fpr, b_tpr, b_name = baseline
        ax_roc.plot(b_fpr, b_tpr, "s-", ms=2, alpha=0.7,
                    label=f"{b_name} (AUC {trapezoid_auc(b_fpr, b_tpr):.3f})")
    ax_roc.plot([0, 1], [0, 1], ":", color="gray", label="chance (AUC 0.5)")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.02, 1.02),
               ylim=(-0.02, 1.02), title="ROC")
    ax_roc.set_aspect("equal")
    ax_roc.legend(loc="lower right", fontsize=8)
    bins = np.linspace(scores.min(), scores.max(), 51) if scores.size else np.linspace(0, 1, 51)
    for name, mask in zip(class_names, (~labels, labels)):
        ax_hist.hist(scores[mask], bins=bins, alpha=0.6, label=f"{name} ({mask.sum()})")
    ax_hist.set(xlabel="score", ylabel="count", title="scores per class")
    ax_hist.legend(fontsize=8)
    return fig


def save_roc_png(path, fpr, tpr, scores, labels, title="", baseline=None,
                 class_names=("negative", "positive")):
    return save_figure(roc_figure(fpr, tpr, scores, labels, title, baseline, class_names), path)


def log_roc(writer, tag, scores, labels, step, png=None, baseline=None,
            class_names=("negative", "positive"), title=None):
    """TensorBoard: AUC scalar, the ROC figure (also saved as `png`), per-class histograms."""
    fpr, tpr, _ = roc_curve(scores, labels)
    labels = torch.as_tensor(labels).bool()
    scores = torch.as_tensor(scores).float()
    auc = trapezoid_auc(fpr, tpr)
    fig = roc_figure(fpr, tpr, scores, labels, title or tag, baseline, class_names)
    if png is not None:
        save_figure(fig, png)
    writer.add_scalar(f"{tag}/auc", auc, step)
    writer.add_figure(f"{tag}/roc", fig, step)
    bins = np.linspace(0, 1, 51)
    for name, mask in (("neg", ~labels), ("pos", labels)):
        if mask.any():
            writer.add_histogram(f"{tag}/{name}", scores[mask], step, bins=bins)
    return auc


def validation_nodules(nodules, val_stride=10):
    """The validation share of a nodule list: every `val_stride`-th series (ch10's split)."""
    return split_by_series(nodules, val_stride)[1]


def main(argv=None):
    from ch13_segment.dsets_cls import read_malignancy_annotations

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true", help="the built-in sample's CSV")
    p.add_argument("--val-stride", type=int, default=10)
    p.add_argument("--out", default=str(runs_dir("ch14")), help="default: runs/ch14/")
    args = p.parse_args(argv)
    check_writable(args.out, "--out")
    if args.synthetic:
        from ch10_luna.dsets import locate_luna

        csv_path = locate_luna(args.data_dir, synthetic=True).malignancy_csv
    else:
        csv_path = book_file("part2/luna/annotations_with_malignancy.csv", args.data_dir,
                             name="luna-csv")
    val = validation_nodules(read_malignancy_annotations(csv_path), args.val_stride)
    diameters = [n.diameter_mm for n in val]
    is_mal = [n.is_malignant for n in val]
    fpr, tpr, thresholds = diameter_roc(diameters, is_mal)
    auc = trapezoid_auc(fpr, tpr)
    print(f"{csv_path}: {len(val)} validation nodules ({sum(is_mal)} malignant) in "
          f"{len({n.series_uid for n in val})} series")
    print(f"diameter baseline AUC {auc:.3f} (100 thresholds; every distinct diameter: "
          f"{exact_auc(diameters, is_mal):.3f})")
    points = [point_near(fpr, tpr, thresholds, mm) for mm in (10.55, 5.42)]
    for mm, f, t in points:
        print(f"  diameter >= {mm:5.2f} mm: FPR {f:.2f}  TPR {t:.2f}")
    png = save_roc_png(Path(args.out) / "diameter_roc.png", fpr, tpr, diameters, is_mal,
                       "diameter", class_names=("benign", "malignant"))
    print(f"wrote {png}")
    return {"auc": auc, "points": points, "n": len(val), "malignant": sum(is_mal)}


if __name__ == "__main__":
    run_cli(main)
