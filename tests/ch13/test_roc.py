"""ROC/AUC and the diameter baseline (book chapter 14)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ch13_segment.dsets_cls import read_malignancy_annotations
from ch13_segment.roc import (
    diameter_roc,
    exact_auc,
    log_roc,
    main,
    point_near,
    roc_curve,
    save_roc_png,
    trapezoid_auc,
    validation_nodules,
)

MAL_CSV = "part2/luna/annotations_with_malignancy.csv"


def auc100(scores, labels):
    return trapezoid_auc(*roc_curve(scores, labels)[:2])


def test_perfect_and_reversed_rankings():
    scores = torch.linspace(0, 1, 20)
    labels = scores > 0.5
    assert auc100(scores, labels) == pytest.approx(1.0)
    assert exact_auc(scores, labels) == pytest.approx(1.0, abs=1e-12)
    assert auc100(scores, ~labels) == pytest.approx(0.0)
    assert exact_auc(scores, ~labels) == pytest.approx(0.0, abs=1e-12)


def test_random_scores_give_about_one_half():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(20_000), rng.random(20_000) < 0.3
    assert auc100(scores, labels) == pytest.approx(0.5, abs=0.015)
    assert exact_auc(scores, labels) == pytest.approx(0.5, abs=0.015)


def test_small_hand_case():
    # positives 0.9, 0.8, 0.6 against negatives 0.7, 0.55, 0.4: 8 of 9 pairs ranked right.
    scores = [0.9, 0.8, 0.7, 0.6, 0.55, 0.4]
    labels = [1, 1, 0, 1, 0, 0]
    fpr, tpr, thresholds = roc_curve(scores, labels)
    assert len(thresholds) == 100 and thresholds[0] == 1.0 and thresholds[-1] == 0.0
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    thr, f, t = point_near(fpr, tpr, thresholds, 0.65)    # 64/99: 0.9, 0.8 and the 0.7
    assert thr == pytest.approx(64 / 99)
    assert (f, t) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert trapezoid_auc(fpr, tpr) == pytest.approx(8 / 9)
    assert exact_auc(scores, labels) == pytest.approx(8 / 9, abs=1e-15)
    assert exact_auc([0.5, 0.5], [1, 0]) == 0.5             # a tie counts half


def test_agrees_with_scikit_learn():
    rng = np.random.default_rng(1)
    for case in range(20):
        n = int(rng.integers(5, 400))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        labels[:2] = [True, False]                          # both classes present
        scores = rng.random(n) + labels * rng.uniform(0, 1)
        if case % 2:
            scores = np.round(scores, 1)                    # many ties
        expected = roc_auc_score(labels, scores)
        assert exact_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
        if case % 2 == 0:                                   # distinct scores in [0, 2)
            probs = scores / 2                              # -> [0, 1): the book's thresholds
            assert auc100(probs, labels) == pytest.approx(expected, abs=0.02)


def test_one_class_absent_gives_no_nan():
    fpr, tpr, _ = roc_curve([0.2, 0.7], [False, False])
    assert torch.isfinite(fpr).all() and torch.isfinite(tpr).all()
    assert trapezoid_auc(fpr, tpr) == 0.0 and exact_auc([0.2, 0.7], [0, 0]) == 0.0


def test_diameter_baseline_on_hand_data():
    diameters = [3.0, 4.0, 5.0, 10.0, 12.0, 20.0]
    malignant = [False, False, True, False, True, True]
    fpr, tpr, thresholds = diameter_roc(diameters, malignant)
    assert thresholds[0] == 20.0 and thresholds[-1] == 3.0 and len(thresholds) == 100
    assert (fpr[0], tpr[0]) == (0.0, pytest.approx(1 / 3))  # only the 20 mm one
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    _, f, t = point_near(fpr, tpr, thresholds, 9.0)          # >= ~9 mm: 10, 12, 20
    assert (f, t) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert trapezoid_auc(fpr, tpr) == pytest.approx(8 / 9)


def test_png_and_tensorboard(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.random(200) < 0.4
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)
    fpr, tpr, _ = roc_curve(scores, labels)
    png = save_roc_png(tmp_path / "roc.png", fpr, tpr, scores, labels, "test",
                       baseline=(fpr, tpr, "again"))
    assert png.stat().st_size > 10_000
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(tmp_path / "tb") as writer:
        auc = log_roc(writer, "malignancy", torch.tensor(scores), torch.tensor(labels), 1,
                      png=tmp_path / "tb.png")
    assert auc == pytest.approx(trapezoid_auc(fpr, tpr))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "tb.png").stat().st_size > 10_000


@pytest.mark.realdata
def test_book_baseline_on_the_real_annotations(book_file, tmp_path):
    path = book_file(MAL_CSV)
    nodules = read_malignancy_annotations(path)
    assert len(nodules) == 1182 and sum(n.is_malignant for n in nodules) == 378
    assert len({n.series_uid for n in nodules}) == 600
    # The book split the 888 series of candidates.csv; the CSV's own 600 series, every 10th,
    # give 124 validation nodules (40 malignant) where the book had 154 (52 malignant).
    val = validation_nodules(nodules, val_stride=10)
    assert (len(val), sum(n.is_malignant for n in val)) == (124, 40)
    diameters, malignant = [n.diameter_mm for n in val], [n.is_malignant for n in val]
    fpr, tpr, _ = roc_curve(diameters, malignant, [10.55, 5.42])
    assert fpr[0] == pytest.approx(0.01, abs=0.015)        # book: FPR 0.01, TPR 0.56
    assert tpr[0] == pytest.approx(0.56, abs=0.015)
    assert tpr[1] == pytest.approx(0.96, abs=0.015)        # book: TPR 0.96 ...
    assert fpr[1] == pytest.approx(0.62, abs=0.005)        # ... at FPR 0.43: split-dependent
    result = main(["--data-dir", str(path.parents[2]), "--out", str(tmp_path)])
    assert result["auc"] == pytest.approx(exact_auc(diameters, malignant), abs=0.01)
    assert (tmp_path / "diameter_roc.png").exists()
