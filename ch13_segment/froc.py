"""LUNA16's own scoring: FROC and CPM as the challenge's evaluation script computes them.

    scans = [score_scan(marks_xyz, probs, nodules_xyz, diameters, excluded_xyz, excluded_d)
             for each scan evaluated]                     # every scan, with marks or not
    result = evaluate(scans, n_resamples=1000, seed=0)   # CPM, 7 sensitivities, counts, band

The rules are those of `noduleCADEvaluationLUNA16.py` in the challenge's evaluationScript.zip
(Setio et al. 2017, Medical Image Analysis 42): at most the 100 most probable marks per scan; a
hit strictly within the nodule's radius; a nodule found once, by its most probable hit; marks
on excluded findings ignored; every other mark a false positive. CPM is the mean sensitivity at
1/8 .. 8 false positives per scan. numpy only (no scikit-learn); distances in mm (the patient
frame of the .mhd files). Every rule, and how the tests check it: NOTES.md.
"""
import math
from collections import namedtuple

import numpy as np

MAX_MARKS = 100                          # the script's maxNumberOfCADMarks
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)   # false positives per scan for the CPM
UNSIZED_DIAMETER_MM = 10.0               # a negative diameter (-1 in annotations_excluded.csv)
FROC_MIN, FROC_MAX = 0.125, 8.0          # the bootstrap curves are compared on this range,
GRID_POINTS = 10_000                     # at this many evenly spaced points (as the script)
CONFIDENCE = 0.95
N_RESAMPLES = 1000

# One scan's marks sorted out: nodule_probs (N,) the best probability among each annotated
# nodule's hits (-inf: never hit); fp_probs (F,) the false positives' probabilities; ignored
# (marks on excluded findings only), extra_hits (hits beyond the first on a nodule: the
# script's "double detections", neither true nor false), marks_kept of marks_given.
ScanScore = namedtuple("ScanScore", ["nodule_probs", "fp_probs", "ignored", "extra_hits",
                                     "marks_kept", "marks_given"])


def top_marks(probs, max_marks=MAX_MARKS):
    """(M,) bool: the marks kept, at most `max_marks` of the most probable.

    As the script: with more than `max_marks` marks, it keeps those strictly above the
    (max_marks + 1)-th highest probability, so marks tied at the cut all go and fewer may stay.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) <= max_marks:
        return np.ones(len(probs), dtype=bool)
    cut = np.sort(probs)[::-1][max_marks]
    return probs > cut


def hits(marks_xyz, centers_xyz, diameters_mm):
    """(N, M) bool: mark m lies strictly within finding n's radius (negative diameter: 10 mm).

    The squared distance adds dx^2 + dy^2 + dz^2 in that order, as the script does, so a mark
    exactly on the radius is not a hit, to the last bit.
    """
    marks = np.asarray(marks_xyz, dtype=np.float64).reshape(-1, 3)
    centers = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    diameters = np.asarray(diameters_mm, dtype=np.float64).reshape(-1)
    diameters = np.where(diameters < 0, UNSIZED_DIAMETER_MM, diameters)
    d = centers[:, None, :] - marks[None, :, :]                          # (N, M, 3) mm
    dist2 = d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2
    return dist2 < ((diameters / 2.0) ** 2)[:, None]


def score_scan(marks_xyz, probs, nodules_xyz, nodule_diameters_mm, excluded_xyz=(),
               excluded_diameters_mm=(), max_marks=MAX_MARKS):
    """One scan's marks (M, 3) mm with probabilities (M,) against its nodules and exclusions.

    A mark that hits an annotated nodule is never a false positive, even inside an excluded
    finding too (the script takes the included nodules first); a mark may hit several nodules
    and then counts for each.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    marks = np.asarray(marks_xyz, dtype=np.float64).reshape(-1, 3)
    keep = top_marks(probs, max_marks)
    marks, kept = marks[keep], probs[keep]
    on_nodule = hits(marks, nodules_xyz, nodule_diameters_mm)            # (N, M)
    on_excluded = hits(marks, excluded_xyz, excluded_diameters_mm).any(axis=0)
    best = np.where(on_nodule, kept[None, :], -np.inf).max(axis=1, initial=-np.inf)
    hit_any = on_nodule.any(axis=0)
    ignored = ~hit_any & on_excluded
    extra = int(np.maximum(on_nodule.sum(axis=1) - 1, 0).sum())
    return ScanScore(best, kept[~hit_any & ~on_excluded], int(ignored.sum()), extra,
                     int(keep.sum()), len(probs))


# ----------------------------------------------------------------------------- the curve
def roc_counts(scores, labels, weights=None):
    """sklearn.metrics.roc_curve's points as counts: (thresholds, hits, false positives).

    One point per distinct score, highest first, the cumulative (weighted) count of label-1
    and label-0 entries at or above it; points collinear with both neighbours and of equal
    steps are dropped (roc_curve's drop_intermediate=True), and (inf, 0, 0) is put first.
    Ties between a hit and false positives share one point, so the curve goes diagonally.
    Weights (bootstrap multiplicities) count an entry that many times; weight 0 removes it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    weights = np.ones_like(scores) if weights is None else np.asarray(weights, np.float64)
    distinct, group = np.unique(scores, return_inverse=True)            # ascending
    n = len(distinct)
    present = np.bincount(group, weights=weights, minlength=n)[::-1] > 0
    tps = np.bincount(group, weights=weights * labels, minlength=n)[::-1][present].cumsum()
    fps = np.bincount(group, weights=weights * (1 - labels), minlength=n)[::-1][present]
    fps = fps.cumsum()
    thresholds = distinct[::-1][present]
    if len(fps) > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        thresholds, tps, fps = thresholds[corner], tps[corner], fps[corner]
    return np.r_[np.inf, thresholds], np.r_[0.0, tps], np.r_[0.0, fps]


def froc_curve(found_probs, fp_probs, n_nodules, n_scans, found_weights=None,
               fp_weights=None):
    """(fps_per_scan, sensitivity, thresholds): the script's computeFROC.

    fps = fpr * (false positives) / scans and sensitivity = tpr * found / nodules, the same
    float operations in the same order as the script, so a rate reached exactly (1 FP in 8
    scans) is exactly 0.125. Border cases: no false positive gives fps 0 everywhere (as the
    script); nothing found gives sensitivity 0 everywhere (the script's tpr is NaN there).
    """
    found_probs, fp_probs = np.asarray(found_probs, np.float64), np.asarray(fp_probs, np.float64)
    ones = lambda a, w: np.ones(len(a)) if w is None else np.asarray(w, np.float64)
    weights = np.r_[ones(found_probs, found_weights), ones(fp_probs, fp_weights)]
    labels = np.r_[np.ones(len(found_probs)), np.zeros(len(fp_probs))]
    thresholds, tps, fps = roc_counts(np.r_[found_probs, fp_probs], labels, weights)
    n_found, n_fp = tps[-1], fps[-1]
    fpr = fps / n_fp if n_fp > 0 else np.zeros_like(fps)
    tpr = tps / n_found if n_found > 0 else np.zeros_like(tps)
    fps_per_scan = fpr * n_fp / n_scans
    sensitivity = tpr * n_found / n_nodules
    return fps_per_scan, sensitivity, thresholds


def sensitivities(fps_per_scan, sensitivity, rates=FP_RATES):
    """np.interp of the curve at `rates`; at a rate reached exactly, the point reached last."""
    return np.interp(rates, fps_per_scan, sensitivity)


# ----------------------------------------------------------------------------- all scans
def pooled(scans):
    """The scans' entries side by side: found probs, their scan, FP probs, their scan, nodules."""
    found = [s.nodule_probs[np.isfinite(s.nodule_probs)] for s in scans]
    return (np.concatenate([np.zeros(0)] + found),
            np.concatenate([np.zeros(0, int)] + [np.full(len(f), i) for i, f in enumerate(found)]),
            np.concatenate([np.zeros(0)] + [s.fp_probs for s in scans]),
            np.concatenate([np.zeros(0, int)] + [np.full(len(s.fp_probs), i)
                                                 for i, s in enumerate(scans)]),
            np.array([len(s.nodule_probs) for s in scans], dtype=np.float64))


def interval(samples, confidence=CONFIDENCE):
    """(lower, upper) along axis 0: the script's compute_mean_ci order statistics.

    With n samples sorted, vec[floor(p n)] and vec[floor((1 - p) n)], p = (1 - confidence)/2:
    the 26th and 976th of 1,000.
    """
    ordered = np.sort(np.asarray(samples, dtype=np.float64), axis=0)
    p = (1.0 - confidence) / 2.0
    n = len(ordered)
    return ordered[int(math.floor(p * n))], ordered[int(math.floor((1.0 - p) * n))]


def bootstrap(scans, n_resamples=N_RESAMPLES, seed=0, confidence=CONFIDENCE, rates=FP_RATES):
    """Resample the scans with replacement: the curve's and the CPM's mean and interval.

    As the script's computeFROC_bootstrap: each resample draws as many scans as there are,
    pools their entries (a scan drawn twice counts twice) and divides by the number of scans;
    the curves are compared by np.interp on GRID_POINTS evenly spaced rates from 1/8 to 8.
    Departures: a seeded numpy Generator (the script uses the unseeded global state), float64
    (the script stores the interpolated curves as float32), the CPM and the seven
    sensitivities get the same interval (the script gives it for the curve only), and a
    resample without any nodule (sensitivity undefined; possible only with few scans) is left
    out and counted.
    """
    rng = np.random.default_rng(seed)
    found, found_scan, fp, fp_scan, nodules = pooled(scans)
    grid = np.linspace(FROC_MIN, FROC_MAX, GRID_POINTS)
    curves, at_rates, skipped = [], [], 0
    for _ in range(n_resamples):
        times = np.bincount(rng.integers(len(scans), size=len(scans)), minlength=len(scans))
        n_nodules = float(times @ nodules)
        if n_nodules == 0:
            skipped += 1
            continue
        fps, sens, _ = froc_curve(found, fp, n_nodules, len(scans), times[found_scan],
                                  times[fp_scan])
        curves.append(np.interp(grid, fps, sens))
        at_rates.append(sensitivities(fps, sens, rates))
    if not curves:
        return {"resamples": 0, "skipped": skipped, "seed": seed}
    curves, at_rates = np.array(curves), np.array(at_rates)
    cpms = at_rates.mean(axis=1)
    curve_lo, curve_hi = interval(curves, confidence)
    rates_lo, rates_hi = interval(at_rates, confidence)
    cpm_lo, cpm_hi = interval(cpms, confidence)
    return {"resamples": len(curves), "skipped": skipped, "seed": seed,
            "confidence": confidence, "grid": grid, "curve_mean": curves.mean(axis=0),
            "curve_lower": curve_lo, "curve_upper": curve_hi,
            "sensitivity_lower": rates_lo, "sensitivity_upper": rates_hi,
            "cpm_mean": float(cpms.mean()), "cpm_lower": float(cpm_lo),
            "cpm_upper": float(cpm_hi)}


def evaluate(scans, n_resamples=N_RESAMPLES, seed=0, confidence=CONFIDENCE, rates=FP_RATES):
    """CPM, the sensitivities at `rates`, the curve, the counts and (n_resamples > 0) the band.

    `scans` holds one ScanScore per scan evaluated, including scans with no marks or no
    nodules: each counts in the false positives per scan. ValueError without any nodule.
    """
    found, _, fp, _, nodules = pooled(scans)
    n_nodules = int(nodules.sum())
    if n_nodules == 0:
        raise ValueError("no annotated nodule in the scans evaluated: sensitivity is undefined")
    fps, sens, thresholds = froc_curve(found, fp, n_nodules, len(scans))
    at_rates = sensitivities(fps, sens, rates)
    result = {"cpm": float(at_rates.mean()), "rates": tuple(rates),
              "sensitivities": at_rates, "fps_per_scan": fps, "sensitivity": sens,
              "thresholds": thresholds, "scans": len(scans), "nodules": n_nodules,
              "found": len(found), "false_positives": len(fp),
              "ignored": sum(s.ignored for s in scans),
              "extra_hits": sum(s.extra_hits for s in scans),
              "marks_kept": sum(s.marks_kept for s in scans),
              "marks_given": sum(s.marks_given for s in scans)}
    if n_resamples:
        result["bootstrap"] = bootstrap(scans, n_resamples, seed, confidence, rates)
    return result
