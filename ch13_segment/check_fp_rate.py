"""Chapter 14: how many false positives per CT does each classifier threshold cost?

    python ch13_segment/check_fp_rate.py --analysis runs/ch13/analysis.json
    python ch13_segment/check_fp_rate.py --run-validation --synthetic    # runs the analysis first

The false-positive-rate check of chapter 14's "what next" notes. It reads the candidates that
`nodule_analysis.py --json` wrote (or, without --analysis, runs `nodule_analysis.main` with the
flags given, which are that script's) and prints, for P(nodule) thresholds 0.1 .. 0.9, the
recall (annotated nodules matched by a candidate above the threshold), the false positives per
CT and the precision, marking nodule_analysis's operating point (P(nodule) > 0.5); it saves
`froc.png` (recall against false positives per CT) in --out (default runs/ch13/). A candidate
matches a nodule as in the analysis: distance / diameter < 0.7. Definitions: NOTES.md.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from ch13_segment.nodule_analysis import (
    MATCH_RATIO,
    NODULE_THRESHOLD,
    Annotation,
    Detection,
    analysis_parser,
    match_detections,
)
from ch13_segment.nodule_analysis import main as analysis_main
from ch13_segment.nodule_analysis import parse_args as parse_analysis_args
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

SWEEP = tuple(round(0.1 * k, 1) for k in range(1, 10))      # 0.1 .. 0.9 (0.5 among them)


# ----------------------------------------------------------------------------- reading
def read_analysis(path):
    """(series, match_ratio, operating threshold) from a nodule_analysis.py --json file.

    `series` is a list of (series_uid, [Detection], [Annotation]); anything that is not such
    a file is a DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--analysis {path}: no such file (write one with: python "
                        "ch13_segment/nodule_analysis.py --run-validation --json FILE)")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"--analysis {path}: not JSON ({type(e).__name__}), so not an analysis "
                        "file from nodule_analysis.py --json") from None
    try:
        series = [(s["series_uid"],
                   [Detection(tuple(c["center_xyz"]), tuple(c["center_irc"]),
                              float(c["prob_nodule"]), c["prob_malignant"])
                    for c in s["candidates"]],
                   [Annotation(tuple(a["center_xyz"]), float(a["diameter_mm"]),
                               a["is_malignant"]) for a in s["annotations"]])
                  for s in doc["series"]]
        thresholds = doc.get("thresholds", {})
        ratio = float(thresholds.get("match_ratio", MATCH_RATIO))
        operating = float(thresholds.get("nodule", NODULE_THRESHOLD))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else type(e).__name__
        raise DataError(f"--analysis {path}: not an analysis file from nodule_analysis.py "
                        f"--json ({what})") from None
    if not series:
        raise DataError(f"--analysis {path}: holds no series")
    for uid, detections, annotations in series:        # json reads NaN: refuse it here
        values = [v for d in detections for v in (*d.center_xyz, d.prob_nodule)] + [
            v for a in annotations for v in (*a.center_xyz, a.diameter_mm)]
        if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
            raise DataError(f"--analysis {path}: series {uid} holds a coordinate, diameter or "
                            "probability that is not a finite number")
        if any(not 0 <= d.prob_nodule <= 1 for d in detections):
            raise DataError(f"--analysis {path}: series {uid} holds a P(nodule) outside [0, 1]")
    return series, ratio, operating


# ----------------------------------------------------------------------------- scores
def series_scores(detections, annotations, ratio=MATCH_RATIO):
    """Per CT, the probabilities that decide every threshold at once.

    Returns (nodule_best, fp_probs, tp_probs): for each annotated nodule the highest
    P(nodule) among the candidates matching it (-inf for a complete miss: never found), the
    P(nodule) of candidates matching no nodule, and of those matching one.
    """
    matches = match_detections(detections, annotations, ratio)        # (A, D)
    probs = np.array([d.prob_nodule for d in detections], dtype=np.float64)
    best = np.where(matches, probs[None, :], -np.inf).max(axis=1, initial=-np.inf)
    matched = matches.any(axis=0)
    return best, probs[~matched], probs[matched]


def sweep(scores, thresholds):
    """One row per threshold: recall, FP per CT, precision and their counts.

    `scores` is a list of series_scores() (one per CT); a candidate passes when P(nodule) >
    threshold, as in nodule_analysis.py. Precision is None when no candidate passes, recall
    None when there is no annotated nodule.
    """
    best = np.concatenate([s[0] for s in scores])
    fp_probs = np.concatenate([s[1] for s in scores])
    tp_probs = np.concatenate([s[2] for s in scores])
    rows = []
    for t in thresholds:
        found, fp, tp = int((best > t).sum()), int((fp_probs > t).sum()), int((tp_probs > t).sum())
        rows.append({"threshold": float(t), "found": found, "nodules": len(best),
                     "recall": found / len(best) if len(best) else None,
                     "false_positives": fp, "fp_per_ct": fp / len(scores),
                     "true_candidates": tp, "precision": tp / (tp + fp) if tp + fp else None})
    return rows


def curve_thresholds(scores):
    """Every distinct P(nodule) of the candidates and 0: the steps of the FROC curve."""
    probs = np.concatenate([np.concatenate([s[1], s[2]]) for s in scores] + [[0.0]])
    return np.unique(probs)[::-1]


# ----------------------------------------------------------------------------- reports
def format_rows(rows, operating):
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = ["threshold | recall (found/all) |  FP/CT  (FPs) | precision"]
    for r in rows:
        mark = "  <- operating point (nodule_analysis.py)" if r["threshold"] == operating else ""
        found, fps = f"({r['found']}/{r['nodules']})", f"({r['false_positives']})"
        lines.append(f"{r['threshold']:9.2f} | {fmt(r['recall'], '6.3f')} {found:>11} | "
                     f"{r['fp_per_ct']:6.2f} {fps:>6} | {fmt(r['precision'], '9.3f')}{mark}")
    return "\n".join(lines)


def save_froc_png(curve, rows, operating, path, title, ceiling=None):
    """Recall against false positives per CT: the whole curve, the sweep, the operating point."""
    fp = np.array([r["fp_per_ct"] for r in curve])
    recall = np.array([r["recall"] or 0.0 for r in curve])
    fig = new_figure(figsize=(7, 5))
    ax = fig.subplots()
    ax.step(fp, recall, where="post", color="tab:blue", label="every threshold")
    ax.plot([r["fp_per_ct"] for r in rows], [r["recall"] or 0.0 for r in rows], "o",
            color="tab:blue", ms=4, label="the sweep")
    at_point = {}                                   # thresholds sharing a point share a label
    for r in rows:
        at_point.setdefault((r["fp_per_ct"], r["recall"] or 0.0), []).append(r["threshold"])
    for xy, ts in at_point.items():
        label = f"{ts[0]:g}" if len(ts) == 1 else f"{min(ts):g}-{max(ts):g}"
        ax.annotate(label, xy, fontsize=7, xytext=(3, -10), textcoords="offset points")
    if ceiling is not None:
        ax.axhline(ceiling, color="gray", ls="--", lw=1,
                   label=f"segmentation ceiling: {ceiling:.3f} (the complete misses)")
    point = next((r for r in rows if r["threshold"] == operating), None)
    if point is not None:
        ax.plot(point["fp_per_ct"], point["recall"] or 0.0, "*", color="tab:red", ms=14,
                label=f"operating point: P(nodule) > {operating:g}")
    positive = fp[fp > 0]
    if len(positive) and positive.max() / positive.min() >= 10:     # spans a decade: log
        ax.set_xscale("symlog", linthresh=positive.min())            # 0 FP/CT stays on the plot
        ax.set_xlim(left=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positives per CT")
    ax.set_ylabel("nodule recall (complete misses never found)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path, tight_layout=False, bbox_inches="tight")


# ----------------------------------------------------------------------------- main
def own_parser():
    p = argparse.ArgumentParser(add_help=False, prog="check_fp_rate.py")
    p.add_argument("--analysis", default=None, metavar="JSON",
                   help="a nodule_analysis.py --json file; without it the analysis runs first "
                        "with the other flags (nodule_analysis.py's)")
    p.add_argument("--thresholds", type=float, nargs="+", default=None,
                   help="P(nodule) thresholds to print (default: 0.1 .. 0.9 and the operating "
                        "point)")
    p.add_argument("--out", default=str(runs_dir("ch13")),
                   help="folder for froc.png (default: runs/ch13/)")
    return p


def parse_args(argv=None):
    """(our flags, nodule_analysis.py's argv): one parser for the help and the checks, made of
    ours and nodule_analysis.py's (parents)."""
    p = argparse.ArgumentParser(description=__doc__, parents=[own_parser(), analysis_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    args = p.parse_args(argv)
    rest = own_parser().parse_known_args(argv)[1]
    if args.analysis is not None and rest:
        p.error(f"--analysis reads a finished analysis: leave out nodule_analysis.py's flags "
                f"({' '.join(rest)})")
    if args.analysis is None:
        parse_analysis_args(rest)                          # its checks, before any work
    if args.thresholds and not all(0 <= t <= 1 for t in args.thresholds):
        p.error("--thresholds must lie in [0, 1]")
    return args, rest


def main(argv=None):
    args, rest = parse_args(argv)
    check_writable(args.out, "--out")                      # before the analysis runs
    if args.analysis is not None:
        series, ratio, operating = read_analysis(args.analysis)
        source = Path(args.analysis).name
    else:
        result = analysis_main(rest)
        if "results" not in result:                        # --list-series: nothing to check
            return result
        series = [(r["series_uid"], r["detections"], r["annotations"])
                  for r in result["results"]]
        ratio, operating, source = MATCH_RATIO, NODULE_THRESHOLD, "nodule_analysis.py"
        print()
    scores = [series_scores(d, a, ratio) for _uid, d, a in series]
    thresholds = sorted(set(args.thresholds or SWEEP) | {operating})
    rows = sweep(scores, thresholds)
    curve = sweep(scores, curve_thresholds(scores))
    n_nodules = rows[0]["nodules"]
    misses = int(sum(np.isinf(s[0]).sum() for s in scores))
    n_candidates = sum(len(s[1]) + len(s[2]) for s in scores)
    missed = f"{misses} complete miss{'' if misses == 1 else 'es'}"
    print(f"{len(series)} CT(s), {n_candidates:,} candidates, {n_nodules} annotated nodules; "
          f"{missed} (no candidate matches them), so at most "
          f"{n_nodules - misses} of {n_nodules} can be found; a candidate passes when "
          f"P(nodule) > threshold\n")
    print(format_rows(rows, operating))
    title = (f"{source}: {len(series)} CT(s), {n_nodules} nodules "
             f"({missed}), {n_candidates:,} candidates")
    ceiling = (n_nodules - misses) / n_nodules if n_nodules else None
    png = save_froc_png(curve, rows, operating, Path(args.out) / "froc.png", title, ceiling)
    print(f"\nFROC figure: {png}")
    return {"rows": rows, "curve": curve, "operating": operating, "complete_misses": misses,
            "n_ct": len(series), "n_nodules": n_nodules, "n_candidates": n_candidates,
            "png": png}


if __name__ == "__main__":
    run_cli(main)
