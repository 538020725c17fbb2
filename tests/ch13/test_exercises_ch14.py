"""Chapter 14's exercises (ch13_segment/exercises_ch14.py, exercises_ch14_patches.py): what each
mechanism must do, on hand-made cases and the tiny sample; one small run of main; a bad flag."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ch10_luna.model import LunaModel
from ch13_segment import exercises_ch14 as ex
from ch13_segment import exercises_ch14_patches as expatch
from ch13_segment.dsets_cls import MalCandidate, balanced_kind, read_candidates_ch14
from ch13_segment.model import UNetWrapper
from ch13_segment.nodule_analysis import Annotation, group_candidates, match_and_score, read_nodules
from common.ct import Ct, load_ct
from tests.common.cli import assert_one_error_line, run_main
from tests.helpers import save_model_state


# ----------------------------------------------------------------------------- 14.1
def test_three_way_split_is_disjoint_by_series_with_the_stated_fractions():
    series = {f"uid{k:02d}": None for k in range(30)}
    train, val, test = ex.three_way_split(series, val_stride=10)
    assert val == ["uid00", "uid10", "uid20"]                  # the chapter's validation
    assert test == ["uid05", "uid15", "uid25"]                 # halfway between them
    assert len(train) == 24 and set(train) | set(val) | set(test) == set(series)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    train, val, test = ex.three_way_split({f"u{k}": None for k in range(10)}, val_stride=3)
    assert (val, test) == (["u0", "u3", "u6", "u9"], ["u1", "u4", "u7"])
    assert train == ["u2", "u5", "u8"]


def test_three_way_split_by_fold_tests_on_the_next_subset():
    series = {f"s{k}.{i}": Path(f"subset{k}/s{k}.{i}.mhd") for k in range(3) for i in range(2)}
    train, val, test = ex.three_way_split(series, fold=1)
    assert (val, test, train) == (["s1.0", "s1.1"], ["s2.0", "s2.1"], ["s0.0", "s0.1"])


@pytest.mark.parametrize("n, stride", [(30, 2), (2, 3)])
def test_three_way_split_refuses_what_leaves_a_set_empty(n, stride):
    with pytest.raises(ex.DataError, match="--val-stride"):
        ex.three_way_split({f"u{k}": None for k in range(n)}, val_stride=stride)


def test_table_scores_read_the_books_table():
    table = np.array([[0, 40, 3, 1],               # 4 false positives pass the classifier
                      [1, 2, 3, 0],                # benign: 3 found of 6
                      [0, 1, 0, 2]])               # malignant: 2 found of 3
    s = expatch.table_scores(table, n_cts=2)
    assert (s["found"], s["nodules"], s["fp"]) == (5, 9, 4)
    assert s["recall"] == pytest.approx(5 / 9) and s["fp_per_ct"] == 2.0
    assert s["f1"] == pytest.approx(2 * 5 / (5 + 4 + 9))


def test_validation_sample_keeps_every_nodule_and_draws_the_non_nodules():
    candidates = [MalCandidate(k % 10 == 0, False, False, 0.0, "u", (float(k), 0.0, 0.0))
                  for k in range(100)]                   # 10 nodules, 90 non-nodules
    sample = ex.validation_sample(candidates, 25, seed=1)
    assert sum(c.is_nodule for c in sample) == 10 and len(sample) == 35
    assert sample == [c for c in candidates if c in sample]         # the list's order
    assert sample == ex.validation_sample(candidates, 25, seed=1)
    assert sample != ex.validation_sample(candidates, 25, seed=2)
    for everything in (0, 90, 500):
        assert ex.validation_sample(candidates, everything) == candidates


# ----------------------------------------------------------------------------- 14.2
def separable_batch(n=6):
    """(n, 1, 32, 48, 48) crops whose class 0/1/2 shows in their brightness, and the classes."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 32, 48, 48, generator=g) * 50 - 600 + 300 * y[:, None, None, None,
                                                                        None]
    return x, y


def test_three_class_model_keeps_the_nodule_backbone_and_its_loss_falls():
    torch.manual_seed(0)
    nodule = LunaModel(conv_channels=2)                  # stands in for the nodule checkpoint
    model = ex.start_model(nodule, n_classes=3, depth=2)
    state, book = model.state_dict(), nodule.state_dict()
    assert set(state) == set(book)                       # the book's parameter names
    for name in ("tail_batchnorm.weight", "block1.conv1.weight", "block4.conv2.weight"):
        assert torch.equal(state[name], book[name])
    assert state["head_linear.weight"].shape == (3, book["head_linear.weight"].shape[1])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"block4", "head_linear"}
    x, y = separable_batch(3)                            # one crop per class
    logits, probs = model(x)
    assert logits.shape == probs.shape == (3, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))
    fresh = ex.start_model(nodule, n_classes=3, depth=0)     # trained whole, from scratch
    optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    losses = ex.train_three_class(fresh, [(x, y)] * 6, optimizer)
    assert losses.shape == (6 * 3,)
    first, last = losses[:3].mean(), losses[-3:].mean()
    assert last < 0.5 * first


def test_three_class_labels_come_from_the_chapter_14_list(seg_luna):
    candidates = read_candidates_ch14(seg_luna)
    ds = ex.ThreeClassLunaDataset(candidates, seg_luna.series)
    classes = ds.classes()
    expected = [0 if not c.is_nodule else 2 if c.is_malignant else 1 for c in candidates]
    assert classes.tolist() == expected and set(expected) == {0, 1, 2}
    for i in (0, int(np.argmax(classes == 1)), len(ds) - 1):
        crop, label, uid, _irc = ds[i]
        assert crop.shape == (1, 32, 48, 48) and int(label) == classes[i]
        assert uid == candidates[i].series_uid


def test_balancings_draw_the_stated_classes():
    classes = np.array([0] * 50 + [1] * 7 + [2] * 4)
    kind = {"neg": 0, "ben": 1, "mal": 2}
    order = ex.class_order(classes, ex.BALANCINGS["malignancy pattern"], 40, seed=3, epoch=2)
    assert [classes[i] for i in order] == [kind[balanced_kind(i)] for i in range(40)]
    order = ex.class_order(classes, ex.BALANCINGS["equal thirds"], 30, seed=3)
    assert np.bincount(classes[order]).tolist() == [10, 10, 10]
    benign = [i for i in order if classes[i] == 1]
    assert sorted(benign[:7]) == list(range(50, 57))     # every benign before any repeats
    order = ex.class_order(classes, ex.BALANCINGS["natural ratio"], len(classes), seed=3)
    assert sorted(order) == list(range(len(classes)))
    assert not np.array_equal(order, ex.class_order(classes, None, len(classes), seed=3,
                                                    epoch=2))


def test_two_passes_give_classes_as_the_analysis_thresholds_them():
    p_nodule = [0.2, 0.5, 0.51, 0.9, 0.9, 0.9]
    p_malignant = [0.9, 0.9, 0.2, 0.5, 0.51, 1.0]
    assert ex.two_pass_classes(p_nodule, p_malignant).tolist() == [0, 0, 1, 1, 2, 2]


def test_confusion_and_per_class_recall():
    table = ex.confusion([0, 0, 0, 1, 1, 2], [0, 0, 2, 1, 0, 2])
    assert table.tolist() == [[2, 0, 1], [1, 1, 0], [0, 0, 1]]
    recalls, mean = ex.class_recalls(table)
    assert recalls.tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert mean == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    recalls, mean = ex.class_recalls(ex.confusion([0, 0, 1], [0, 1, 1]))
    assert np.isnan(recalls[2]) and mean == pytest.approx((1 / 2 + 1) / 2)


# ----------------------------------------------------------------------------- 14.3
class DenseTissue(nn.Module):
    """A stand-in U-Net: P = 1 where the centre slice is denser than -400 HU (nodules, vessels,
    the body wall), so the pipeline finds both nodules and other things."""

    def forward(self, x):                                   # (N, 7, R, C) HU
        return (x[:, 3:4] > -400).float()


def test_mined_non_nodules_are_detections_that_match_no_annotation(seg_luna):
    nodules = read_nodules(seg_luna)
    uids = sorted(seg_luna.series)
    mined, matched = ex.mine_non_nodules(DenseTissue(), seg_luna, uids, nodules)
    assert mined and matched
    expected, n_detections = set(), 0
    for uid in uids:
        ct = load_ct(seg_luna.series[uid])
        centers, _ = group_candidates(ct.hu > -400, ct.hu)    # what the stand-in marks
        n_detections += len(centers)
        for irc in centers:
            xyz = np.array(ct.irc_to_xyz(irc))
            ratios = [np.linalg.norm(xyz - np.array(a.center_xyz)) / a.diameter_mm
                      for a in nodules.get(uid, [])]
            if min(ratios, default=np.inf) >= 0.7:
                expected.add((uid, tuple(np.round(xyz, 4))))
    assert len(mined) + matched == n_detections
    assert {(c.series_uid, tuple(np.round(c.center_xyz, 4))) for c in mined} == expected
    assert all(not c.is_nodule and not c.is_malignant for c in mined)


def test_binary_scores_count_at_the_threshold():
    s = ex.binary_scores([0.9, 0.5, 0.7, 0.2, 0.51], [True, True, False, False, False])
    assert (s["tp"], s["pos"], s["fp"], s["neg"]) == (1, 2, 2, 3)
    assert s["recall"] == 0.5 and s["precision"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- 14.4
def test_edge_band_counts_on_a_hand_made_slice():
    assert expatch.border_distance((5, 5)).tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0],
                                                        [0, 1, 2, 1, 0], [0, 1, 1, 1, 0],
                                                        [0, 0, 0, 0, 0]]
    assert expatch.edge_band((6, 8), 1).sum() == 6 * 8 - 4 * 6
    assert expatch.edge_band((6, 8), 2).sum() == 6 * 8 - 2 * 4
    assert expatch.edge_band((6, 8), 3).all()
    band = expatch.edge_band((4, 5), 1)
    assert band.astype(int).tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1],
                                         [1, 1, 1, 1, 1]]
    loss = np.where(band, 3.0, 1.0)
    loss[1, 1] = 4.0                                         # one interior pixel
    assert expatch.region_means(loss, band) == (3.0, pytest.approx((4 + 1 + 1 + 1 + 1 + 1) / 6))


def test_pixel_loss_is_the_dice_numerator_per_pixel():
    pred = torch.tensor([[0.9, 0.2], [0.4, 0.0]])
    label = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = expatch.pixel_loss(pred, label)
    assert loss.flatten().tolist() == pytest.approx([0.1, 0.2, 0.6, 0.0])
    dice = 1 - 2 * (pred * label).sum() / (pred.sum() + label.sum())
    assert float(loss.sum() / (pred.sum() + label.sum())) == pytest.approx(float(dice))


# ----------------------------------------------------------------------------- 14.5
@pytest.mark.parametrize("shape, stride", [((70, 160, 160), (16, 24, 24)),
                                           ((59, 160, 160), (8, 12, 12)),
                                           ((33, 49, 100), (31, 47, 47)),
                                           ((32, 48, 48), (32, 48, 48))])
def test_patch_grid_covers_the_ct_inside_its_bounds(shape, stride):
    starts = expatch.patch_grid(shape, stride).reshape(-1, 3)
    covered = np.zeros(shape, dtype=np.int32)
    for s in starts:
        assert (s >= 0).all() and (s + np.array(expatch.PATCH_IRC) <= shape).all()
        covered[s[0]:s[0] + 32, s[1]:s[1] + 48, s[2]:s[2] + 48] += 1
    assert covered.min() >= 1
    for axis in range(3):
        steps = np.diff(sorted(set(starts[:, axis])))
        assert (steps <= stride[axis]).all()                # never a step over the stride


def test_patch_detections_are_scored_with_the_analysis_matching():
    ct = Ct(np.zeros((64, 192, 192), dtype=np.int16), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
            np.eye(3))
    starts = expatch.patch_grid(ct.shape, (16, 24, 24))                 # (3, 7, 7, 3)
    probs = np.zeros(starts.shape[:3])
    probs[1, 1, 1], probs[1, 1, 2] = 0.9, 0.6         # two touching patches: one detection
    probs[0, 5, 5] = 0.8                              # far away: a false positive
    probs[2, 5, 0] = 0.5                              # at the threshold: not a detection
    detections = expatch.patch_detections(ct, starts, probs.ravel())
    assert len(detections) == 2
    near = max(detections, key=lambda d: d.prob_nodule)
    centres = starts + np.array([16, 24, 24])
    expected = (0.9 * centres[1, 1, 1] + 0.6 * centres[1, 1, 2]) / 1.5      # P-weighted
    assert np.allclose(near.center_irc, expected) and near.prob_nodule == 0.9
    nodule_xyz = tuple(float(v) for v in expected[::-1])                 # irc -> xyz here
    annotations = [Annotation(nodule_xyz, 10.0, True), Annotation((90.0, 90.0, 60.0), 5.0,
                                                                  False)]
    table = match_and_score(detections, annotations)
    assert table.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]]
    assert expatch.table_scores(table, 1)["found"] == 1


# ----------------------------------------------------------------------------- main
@pytest.fixture
def smallest_models(tmp_path):
    """The smallest U-Net that loads (one level of two channels; it marks every voxel, so each
    CT gives one candidate) and a two-channel classifier, as checkpoints: (seg, cls) paths."""
    torch.manual_seed(0)
    seg = UNetWrapper(in_channels=7, n_classes=1, depth=1, wf=1, padding=True, batch_norm=True)
    with torch.no_grad():
        seg.unet.last.weight.zero_()
        seg.unet.last.bias.fill_(5.0)
    return (save_model_state(seg, tmp_path / "seg.state"),
            save_model_state(LunaModel(conv_channels=2), tmp_path / "cls.state"))


def test_main_answers_every_exercise(seg_luna, smallest_models, tmp_path, capsys):
    seg, cls = smallest_models
    answers = ex.main(["--data-dir", str(seg_luna.root), "--seg-model", seg, "--cls-model", cls,
                       "--epochs", "1", "--epoch-size", "8", "--batch-size", "4",
                       "--val-stride", "3", "--max-cts", "1", "--val-negatives", "6",
                       "--stride", "32,48,48", "--patch-cts", "1", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert set(answers) == {1, 2, 3, 4, 5}
    for n in range(1, 6):
        assert f"Exercise 14.{n}:" in out
    for label in ("Do they agree?", "a. Which balancing works best?", "b. One pass against",
                  "a. Does it improve?", "b. Which candidates change most?", "whole slices:",
                  "crops classified per CT"):
        assert label in out
    assert answers[1]["split"] == {"train": 1, "val": 1, "test": 1}
    assert answers[1]["listed"][1] == 6 and answers[2]["val_counts"][0] == 6
    assert set(answers[2]["runs"]) == set(ex.BALANCINGS)
    assert answers[3]["mined"] >= 1
    for png in (answers[4]["png"], answers[5]["png"]):
        assert Path(png).stat().st_size > 10_000


@pytest.mark.parametrize("argv, flag", [(["--exercise", "6"], "--exercise"),
                                        (["--stride", "40,48,48"], "--stride"),
                                        (["--stride", "8,12"], "--stride"),
                                        (["--epochs", "0"], "--epochs"),
                                        (["--val-negatives", "-1"], "--val-negatives")])
def test_bad_flags_are_one_line(argv, flag, capsys):
    code, err = run_main(ex.main, argv, capsys)
    assert_one_error_line(code, err, flag)
