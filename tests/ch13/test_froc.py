"""LUNA16's FROC/CPM (ch13_segment/froc.py) on hand-made scans with known answers, and against
the challenge script's own construction on sklearn's roc_curve."""
import math

import numpy as np
import pytest

from ch13_segment.froc import (
    FP_RATES,
    evaluate,
    froc_curve,
    hits,
    interval,
    roc_counts,
    score_scan,
    top_marks,
)

NODULE = [(0.0, 0.0, 0.0)]                      # one 10 mm nodule at the origin


def one_scan(marks, probs, nodules=NODULE, diameters=(10.0,), excluded=(), excluded_d=()):
    return score_scan(np.array(marks, dtype=float).reshape(-1, 3), probs, nodules, diameters,
                      excluded, excluded_d)


def test_a_mark_exactly_on_the_radius_is_not_a_hit():
    marks = [(5.0, 0, 0), (0, -5.0, 0), (3.0, 4.0, 0), (4.999, 0, 0), (0, 0, 4.999)]
    assert hits(marks, NODULE, [10.0]).tolist() == [[False, False, False, True, True]]
    s = one_scan(marks[:3], [0.9, 0.8, 0.7])
    assert s.nodule_probs.tolist() == [-np.inf]            # never hit: a miss
    assert sorted(s.fp_probs.tolist()) == [0.7, 0.8, 0.9]  # all three are false positives


def test_one_mark_on_two_overlapping_nodules_finds_both():
    s = one_scan([(1.0, 0, 0)], [0.8], nodules=[(0, 0, 0), (2.0, 0, 0)], diameters=(10, 10))
    assert s.nodule_probs.tolist() == [0.8, 0.8]
    assert len(s.fp_probs) == 0 and s.extra_hits == 0
    r = evaluate([s], n_resamples=0)
    assert (r["nodules"], r["found"], r["false_positives"]) == (2, 2, 0)
    assert r["cpm"] == 1.0


def test_two_marks_on_one_nodule_count_once_with_the_more_probable():
    s = one_scan([(1.0, 0, 0), (0, 2.0, 0)], [0.3, 0.9])
    assert s.nodule_probs.tolist() == [0.9]
    assert len(s.fp_probs) == 0 and s.extra_hits == 1     # the second hit: neither TP nor FP


def test_marks_on_excluded_findings_are_ignored_but_hits_win():
    excluded, excluded_d = [(50.0, 0, 0), (80.0, 0, 0), (3.0, 0, 0)], [-1.0, 3.0, 4.0]
    marks = [(54.0, 0, 0),       # 4 mm from an unsized finding (10 mm): ignored
             (55.5, 0, 0),       # 5.5 mm: outside it, a false positive
             (81.4, 0, 0),       # 1.4 mm from a 3 mm finding: ignored
             (81.6, 0, 0),       # 1.6 mm: a false positive
             (2.0, 0, 0)]        # inside the nodule and an excluded finding: a hit
    s = one_scan(marks, [0.1, 0.2, 0.3, 0.4, 0.5], excluded=excluded, excluded_d=excluded_d)
    assert s.ignored == 2
    assert sorted(s.fp_probs.tolist()) == [0.2, 0.4]
    assert s.nodule_probs.tolist() == [0.5]
    r = evaluate([s], n_resamples=0)
    assert (r["found"], r["false_positives"], r["ignored"]) == (1, 2, 2)


def test_a_scan_without_nodules_still_divides_the_false_positives():
    # Scan A: its nodule found at 0.5 below one FP at 0.9. Alone, that FP is 1 per scan, so the
    # nodule counts from 1 FP/scan on: 4 of the 7 rates. With an empty scan B beside it, the FP
    # is 0.5 per scan: 5 of 7.
    a = one_scan([(0, 0, 1.0), (40.0, 0, 0)], [0.5, 0.9])
    b = score_scan(np.zeros((0, 3)), [], [], [])
    assert evaluate([a], n_resamples=0)["cpm"] == pytest.approx(4 / 7)
    two = evaluate([a, b], n_resamples=0)
    assert two["cpm"] == pytest.approx(5 / 7)
    assert (two["scans"], two["nodules"], two["false_positives"]) == (2, 1, 1)
    assert two["sensitivities"].tolist() == [0, 0, 1, 1, 1, 1, 1]


def test_no_marks_at_all_scores_zero_and_no_nodules_at_all_is_refused():
    empty = score_scan(np.zeros((0, 3)), [], NODULE, [10.0])
    r = evaluate([empty, empty], n_resamples=20)
    assert r["cpm"] == 0.0 and r["found"] == 0 and r["nodules"] == 2
    assert r["bootstrap"]["cpm_upper"] == 0.0
    with pytest.raises(ValueError, match="no annotated nodule"):
        evaluate([score_scan([(1.0, 2.0, 3.0)], [0.5], [], [])], n_resamples=0)


def test_more_than_100_marks_keep_the_100_most_probable():
    far = [(100.0 + i, 0, 0) for i in range(150)]          # 150 false positives
    probs = np.linspace(0.9, 0.2, 150)
    # The nodule's only hit ranks 101st: it is dropped and the nodule is missed.
    s = one_scan(far + [(0, 0, 0)], np.r_[probs[:100] + 0.05, probs[100] + 0.001, probs[100:]])
    assert (s.marks_kept, s.marks_given) == (100, 151)
    assert s.nodule_probs.tolist() == [-np.inf] and len(s.fp_probs) == 100
    # Ranked 100th it stays, and 99 false positives with it.
    s = one_scan(far + [(0, 0, 0)], np.r_[probs, 0.5])
    assert s.nodule_probs.tolist() == [0.5] and len(s.fp_probs) == 99
    # Marks tied at the cut (100th and 101st) all go, as in the script: 99 remain.
    tied = np.r_[np.linspace(0.9, 0.5, 99), 0.3, 0.3, 0.1]
    assert top_marks(tied).sum() == 99 and not top_marks(tied)[99:].any()


def test_a_hit_tied_with_false_positives_exactly_at_a_rate():
    # One scan, nodules A and B. A is hit at 0.9; B's hit and one false positive share 0.5.
    # roc_curve makes one point for the tie: from (0 FP, 1/2) straight to (1 FP, 2/2). At the
    # rates below 1 the sensitivity lies on that diagonal; at exactly 1 FP/scan it is 1.
    nodules, d = [(0, 0, 0), (30.0, 0, 0)], (10, 10)
    s = one_scan([(0, 0, 1.0), (30.0, 0, 1.0), (60.0, 0, 0)], [0.9, 0.5, 0.5],
                 nodules=nodules, diameters=d)
    r = evaluate([s], n_resamples=0)
    assert r["sensitivities"].tolist() == [0.5625, 0.625, 0.75, 1, 1, 1, 1]
    assert r["cpm"] == pytest.approx((0.5625 + 0.625 + 0.75 + 4) / 7)
    # B just below the false positive: flat at 1/2 up to 1 FP/scan, where the step up is
    # reached last, so the sensitivity at exactly 1 is 1 (np.interp takes the last point).
    s = one_scan([(0, 0, 1.0), (30.0, 0, 1.0), (60.0, 0, 0)], [0.9, 0.4, 0.5],
                 nodules=nodules, diameters=d)
    assert evaluate([s], n_resamples=0)["sensitivities"].tolist() == [0.5] * 3 + [1] * 4
    # B just above it: found before any false positive.
    s = one_scan([(0, 0, 1.0), (30.0, 0, 1.0), (60.0, 0, 0)], [0.9, 0.6, 0.5],
                 nodules=nodules, diameters=d)
    assert evaluate([s], n_resamples=0)["cpm"] == 1.0


def test_a_perfect_detector_has_cpm_1_with_or_without_false_positives():
    rng = np.random.default_rng(0)
    scans = []
    for k in range(8):
        nodules = [(40.0 * j, 0, 0) for j in range(k % 3 + 1)]
        marks = nodules + [(500.0 + j, 0, 0) for j in range(30)]
        probs = np.r_[rng.uniform(0.8, 1.0, len(nodules)), rng.uniform(0.0, 0.7, 30)]
        scans.append(score_scan(marks, probs, nodules, [10.0] * len(nodules)))
    r = evaluate(scans, n_resamples=50)
    assert r["cpm"] == 1.0 and r["false_positives"] == 240
    assert r["bootstrap"]["cpm_lower"] == r["bootstrap"]["cpm_upper"] == 1.0
    clean = [score_scan([(0, 0, 0)], [0.7], NODULE, [10.0]) for _ in range(3)]
    assert evaluate(clean, n_resamples=0)["cpm"] == 1.0     # the script's no-FP border case


def random_scans(rng, n_scans=12, rounding=1):
    """Scans of random marks (probabilities rounded, so ties abound) with nodules and exclusions."""
    scans = []
    for _ in range(n_scans):
        nodules = rng.uniform(-60, 60, (int(rng.integers(0, 4)), 3))
        diameters = rng.uniform(4, 25, len(nodules))
        excluded = rng.uniform(-60, 60, (int(rng.integers(0, 3)), 3))
        excluded_d = np.where(rng.random(len(excluded)) < 0.5, -1.0, rng.uniform(3, 8))
        near = (nodules[rng.integers(len(nodules), size=5)] + rng.normal(0, 4, (5, 3))
                if len(nodules) else np.zeros((0, 3)))
        marks = np.r_[near, rng.uniform(-60, 60, (int(rng.integers(0, 30)), 3))]
        probs = np.round(rng.random(len(marks)), rounding)
        scans.append((marks, probs, nodules, diameters, excluded, excluded_d))
    return scans


def test_the_cpm_does_not_depend_on_the_order_of_rows_or_scans():
    rng = np.random.default_rng(3)
    scans = random_scans(rng)
    base = evaluate([score_scan(*s) for s in scans], n_resamples=0)
    shuffled = []
    for marks, probs, *rest in scans[::-1]:
        order = rng.permutation(len(probs))
        shuffled.append(score_scan(marks[order], probs[order], *rest))
    again = evaluate(shuffled, n_resamples=0)
    assert again["cpm"] == base["cpm"] and base["found"] > 0 and base["false_positives"] > 0
    np.testing.assert_array_equal(again["sensitivities"], base["sensitivities"])


def test_the_bootstrap_interval_holds_the_point_estimate_and_repeats_with_its_seed():
    scans = [score_scan(*s) for s in random_scans(np.random.default_rng(5), n_scans=30)]
    r = evaluate(scans, n_resamples=300, seed=7)
    b = r["bootstrap"]
    assert b["resamples"] + b["skipped"] == 300
    assert b["cpm_lower"] <= r["cpm"] <= b["cpm_upper"]
    assert b["cpm_lower"] < b["cpm_upper"]                  # a real spread, not one value
    assert np.all(b["sensitivity_lower"] <= r["sensitivities"])
    assert np.all(r["sensitivities"] <= b["sensitivity_upper"])
    assert np.all(b["curve_lower"] <= b["curve_upper"]) and len(b["grid"]) == 10_000
    assert evaluate(scans, n_resamples=300, seed=7)["bootstrap"]["cpm_lower"] == b["cpm_lower"]
    other = evaluate(scans, n_resamples=300, seed=8)["bootstrap"]
    assert (other["cpm_lower"], other["cpm_upper"]) != (b["cpm_lower"], b["cpm_upper"])


def test_interval_takes_the_scripts_order_statistics():
    lo, hi = interval(np.arange(1000.0)[::-1])              # sorted: vec[25] and vec[975]
    assert (lo, hi) == (25.0, 975.0)
    assert interval(np.arange(10.0)) == (0.0, 9.0)


# ----------------------------------------------------------------------------- vs sklearn
def script_froc(labels, probs, n_scans, excluded_flags):
    """The challenge script's computeFROC, on sklearn's roc_curve: the reference."""
    from sklearn.metrics import roc_curve

    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    keep = ~np.asarray(excluded_flags, bool)
    n_found, n_total, n_candidates = labels[keep].sum(), labels.sum(), keep.sum()
    fpr, tpr, thresholds = roc_curve(labels[keep], probs[keep])
    fps = (np.zeros(len(fpr)) if labels.sum() == len(labels)
           else fpr * (n_candidates - n_found) / n_scans)
    return fps, (tpr * n_found) / n_total, thresholds


def script_scan_entries(marks, probs, nodules, diameters, excluded, excluded_d):
    """The script's per-scan loop (top 100, included nodules first, then exclusions), written
    out with plain Python loops: (labels, probs, excluded flags)."""
    probs = [float(p) for p in probs]
    keys = list(range(len(probs)))
    if len(keys) > 100:
        cut = sorted(probs, reverse=True)[100]
        keys = [k for k in keys if probs[k] > cut]
    remaining = set(keys)
    findings = ([(c, d, "Included") for c, d in zip(nodules, diameters)]
                + [(c, d, "Excluded") for c, d in zip(excluded, excluded_d)])
    labels, out_probs, flags = [], [], []
    for (x, y, z), d, state in findings:
        d = 10.0 if d < 0 else float(d)
        matches = []
        for k in keys:
            x2, y2, z2 = marks[k]
            if math.pow(x - x2, 2.) + math.pow(y - y2, 2.) + math.pow(z - z2, 2.) < \
                    pow(d / 2.0, 2.0):
                if state == "Included":
                    matches.append(k)
                    remaining.discard(k)
                else:
                    remaining.discard(k)
        if state == "Included":
            labels.append(1.0)
            out_probs.append(max(probs[k] for k in matches) if matches else -1e9)
            flags.append(not matches)
    for k in sorted(remaining):
        labels.append(0.0)
        out_probs.append(probs[k])
        flags.append(False)
    return labels, out_probs, flags


@pytest.mark.parametrize("seed", range(6))
def test_equal_to_the_script_on_sklearn_to_the_last_bit(seed):
    rng = np.random.default_rng(seed)
    scans = random_scans(rng, n_scans=int(rng.integers(3, 15)), rounding=int(rng.integers(1, 3)))
    if seed == 0:                                  # one scan over the 100-mark limit
        marks = rng.uniform(-60, 60, (140, 3))
        scans.append((marks, np.round(rng.random(140), 2), marks[:2] + 1.0, np.array([8., 9.]),
                      np.zeros((0, 3)), np.zeros(0)))
    entries = [script_scan_entries(*s) for s in scans]
    labels = sum((e[0] for e in entries), [])
    probs = sum((e[1] for e in entries), [])
    flags = sum((e[2] for e in entries), [])
    if sum(labels) == 0:
        pytest.skip("this draw has no nodule")
    ref_fps, ref_sens, ref_thresholds = script_froc(labels, probs, len(scans), flags)
    r = evaluate([score_scan(*s) for s in scans], n_resamples=0)
    np.testing.assert_array_equal(r["fps_per_scan"], ref_fps)
    np.testing.assert_array_equal(r["sensitivity"], ref_sens)
    np.testing.assert_array_equal(r["thresholds"], ref_thresholds)
    assert r["cpm"] == np.interp(FP_RATES, ref_fps, ref_sens).mean()


def test_weights_count_entries_that_many_times():
    rng = np.random.default_rng(1)
    found, fp = np.round(rng.random(12), 1), np.round(rng.random(40), 1)
    wf, wp = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
    weighted = froc_curve(found, fp, 20, 6, wf, wp)
    repeated = froc_curve(np.repeat(found, wf), np.repeat(fp, wp), 20, 6)
    for a, b in zip(weighted, repeated):
        np.testing.assert_array_equal(a, b)


def test_roc_counts_drops_collinear_points_like_roc_curve():
    from sklearn.metrics import roc_curve

    scores = [0.9, 0.8, 0.7, 0.6, 0.6, 0.5, 0.4]
    labels = [1, 0, 0, 0, 1, 1, 0]
    thresholds, tps, fps = roc_counts(scores, labels)
    fpr, tpr, ref_thresholds = roc_curve(labels, scores)
    np.testing.assert_array_equal(thresholds, ref_thresholds)
    np.testing.assert_array_equal(fps / fps[-1], fpr)
    np.testing.assert_array_equal(tps / tps[-1], tpr)
    assert len(thresholds) < len(set(scores)) + 1            # something was dropped
