"""exercises_ch13.py: the augmenting module, the three-way split, the three-class U-Net, the
mixed-shape batches, the data sources; one tiny run of main and its bad flags."""
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from ch10_luna.augment import BOOK_AUGMENTATION, batch_augmenter
from ch10_luna.model import LunaModel
from ch13_segment import exercises_ch13 as ex
from ch13_segment.dsets import (
    Luna2dSegmentationDataset,
    TrainingLuna2dSegmentationDataset,
    dense_mask,
    split_series,
)
from ch13_segment.model import UNet
from ch13_segment.train_seg import dice_loss, fn_weighted_loss
from tests.common.cli import assert_one_error_line, run_main

TINY = ex.Sizes(epochs=1, epoch_size=16, batch_size=8, lr=1e-2, seed=0, width=2, depth=2)


@pytest.fixture
def luna_root(seg_luna, tmp_path):
    """A copy of the 3-CT sample under tmp_path/data/luna: --data-dir tmp_path/data."""
    shutil.copytree(seg_luna.root, tmp_path / "data" / "luna")
    return tmp_path / "data"


# ----------------------------------------------------------------------------- 13.1
def test_augmentation_module_draws_the_chapters_augmentation_and_is_off_in_eval():
    x = torch.randn(3, 1, 8, 12, 12) * 300 - 500
    module, chapter = ex.AugmentationModule(BOOK_AUGMENTATION, seed=3), batch_augmenter(
        BOOK_AUGMENTATION, 3, 1)
    for _batch in range(2):                                  # batch by batch, the same draws
        assert torch.equal(module(x), chapter(x))
    module.set_epoch(2, first_batch=5)                       # a run resumed mid-epoch
    assert torch.equal(module(x), batch_augmenter(BOOK_AUGMENTATION, 3, 2, 0, 5)(x))
    assert not torch.equal(module(x), x)
    module.eval()
    assert module(x) is x
    assert list(module.parameters()) == [] and list(module.buffers()) == []


def test_augmented_classifier_is_the_bare_model_in_eval_and_trains_as_the_callable(
        one_torch_thread):
    small = dict(conv_channels=2, crop_irc=(16, 16, 16))
    torch.manual_seed(0)
    start = LunaModel(**small)
    batches = [(torch.randn(4, 1, 16, 16, 16) * 300 - 500, torch.tensor([0, 1, 0, 1]))
               for _ in range(3)]
    wrapped = ex.AugmentedClassifier(LunaModel(**small), ex.AugmentationModule(
        BOOK_AUGMENTATION, seed=1))
    wrapped.model.load_state_dict(start.state_dict())
    bare = LunaModel(**small)
    bare.load_state_dict(start.state_dict())
    assert sorted(wrapped.state_dict()) == sorted(f"model.{k}" for k in bare.state_dict())
    for model, augment in ((wrapped, None), (bare, batch_augmenter(BOOK_AUGMENTATION, 1, 1))):
        rate = ex.train_classifier(model, batches, torch.optim.SGD(model.parameters(), lr=1e-3),
                                   augment)
        assert rate > 0
    for key, value in bare.state_dict().items():             # the same augmentation, same steps
        assert torch.equal(wrapped.model.state_dict()[key], value), key
    wrapped.eval()
    bare.eval()
    x = batches[0][0]
    assert torch.equal(wrapped(x)[1], bare(x)[1])


# ----------------------------------------------------------------------------- 13.2
UIDS = [f"1.2.{i:03d}" for i in range(30)]


def test_three_way_split_is_disjoint_by_series_with_the_stated_fractions():
    train, val, test = ex.three_way_split(UIDS, 10, 10, 5)
    assert val == split_series(UIDS, 10)[1] == [UIDS[0], UIDS[10], UIDS[20]]
    assert test == [UIDS[5], UIDS[15], UIDS[25]]              # a tenth, from position 5
    assert len(train) == 24
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(train + val + test) == UIDS
    # strides that meet: positions 2, 8, 14, 20, 26 minus the validation's 0, 4, 8, ... 28
    train, val, test = ex.three_way_split(reversed(UIDS), 4, 6, 2)
    assert test == [UIDS[2], UIDS[14], UIDS[26]] and len(val) == 8
    assert sorted(train + val + test) == UIDS and not set(val) & set(test)


@pytest.mark.parametrize("strides, words", [((10, 10, 10), "--test-offset 10"),
                                             ((10, 10, 40), "--test-offset 40"),
                                             ((2, 2, 1), "leave 0 for training")])
def test_three_way_split_refuses_what_leaves_a_part_empty(strides, words):
    with pytest.raises(ex.DataError, match=words):
        ex.three_way_split(UIDS, *strides)


def test_per_series_f1_groups_the_rows_by_series():
    rows = torch.zeros(5, 3)
    rows[2:, 0] = torch.tensor([2.0, 0.0, 2.0])              # series a: tp 2, fn 0, fp 2
    rows[2:, 1] = torch.tensor([1.0, 1.0, 0.0])              # series b: tp 1, fn 1 ...
    rows[2:, 2] = torch.tensor([1.0, 0.0, 0.0])              # ... and tp 1: 2 of 3
    dataset = SimpleNamespace(samples=[("a", 0), ("b", 3), ("b", 4)], series_uids=["a", "b"])
    f1 = ex.per_series_f1(rows, dataset)
    assert f1["a"] == pytest.approx(2 / 3) and f1["b"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- 13.3
def test_class_masks_split_the_chapters_mask_into_benign_and_malignant(seg_luna, seg_masks,
                                                                        tmp_path):
    nodules = ex.malignancy_by_series(seg_luna)
    classes = ex.class_masks(seg_luna, nodules, tmp_path / "seg_masks")
    kinds = set()
    for uid, (benign, malignant) in classes.items():
        assert np.array_equal(dense_mask(benign) | dense_mask(malignant),
                              dense_mask(seg_masks[uid]))
        kinds |= {n.is_malignant for n in nodules[uid]}
        assert len(benign.centers_irc) + len(malignant.centers_irc) == len(nodules[uid])
    assert kinds == {True, False}
    uids = sorted(seg_luna.series)
    three = ex.ThreeClassTrainingDataset(uids, seg_luna.series, seg_masks, classes, 12, seed=4)
    two = TrainingLuna2dSegmentationDataset(uids, seg_luna.series, seg_masks, 12, seed=4)
    seen = set()
    for i in range(12):
        image, label, uid, index = three[i]
        chapter = two[i]
        assert torch.equal(image, chapter[0]) and (uid, index) == chapter[2:]
        assert label.dtype == torch.int64 and label.shape == (1, 64, 64)
        assert torch.equal(label > 0, chapter[1])            # nodule or not: the chapter's
        seen |= set(label.unique().tolist())
    assert seen == {0, 1, 2}
    image, label, uid, index = ex.ThreeClassSlices(uids, seg_luna.series, seg_masks, classes)[0]
    assert label.shape == (1, *image.shape[1:]) and label.max() > 0


def test_three_class_unet_gives_class_probabilities_and_its_loss_falls(one_torch_thread):
    model = ex.three_class_unet(TINY, torch.device("cpu"))
    torch.manual_seed(0)
    x = torch.randn(4, 7, 32, 32) * 200 - 600
    label = torch.zeros(4, 32, 32, dtype=torch.int64)
    label[:2, 8:16, 8:16] = 1
    label[2:, 12:24, 10:20] = 2
    x[label[:, None].expand_as(x) > 0] += 700                 # dense nodules, as in a CT
    logits = model(x)
    assert logits.shape == (4, 3, 32, 32)
    assert torch.allclose(logits.softmax(dim=1).sum(dim=1), torch.ones(4, 32, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _step in range(25):
        optimizer.zero_grad()
        loss = ex.class_loss(model(x), label).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_class_loss_is_cross_entropy_plus_the_dice_of_each_nodule_class():
    label = torch.zeros(2, 8, 8, dtype=torch.int64)
    label[0, 2:5, 2:5], label[1, 3:6, 3:6] = 1, 2
    perfect = torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float() * 50
    assert torch.allclose(ex.class_loss(perfect, label), torch.zeros(2), atol=1e-4)
    swapped = perfect[:, [0, 2, 1]]                           # benign called malignant, ...
    probs = swapped.softmax(dim=1)
    dice = (dice_loss(probs[:, 1:2], (label == 1).float()[:, None])
            + dice_loss(probs[:, 2:3], (label == 2).float()[:, None])) / 2
    ce = torch.tensor([50 * 9 / 64, 50 * 9 / 64])            # 9 pixels 50 logits off, of 64
    assert torch.allclose(ex.class_loss(swapped, label), ce + dice, rtol=1e-4)


def test_evaluate_three_class_counts_voxels_and_votes_per_nodule():
    label = torch.zeros(2, 1, 8, 8, dtype=torch.int64)
    label[0, 0, 1:3, 1:3], label[1, 0, 4:7, 4:6] = 1, 2
    data = [(label[i].float().expand(7, 8, 8) * 10, label[i], "s", i) for i in range(2)]

    class Oracle(torch.nn.Module):                            # the label back, from channel 3
        def forward(self, x):
            classes = (x[:, 3] / 10).round().long()
            classes[:, 0, 0] = 2                              # one wrong voxel per slice
            return torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()

    model = Oracle()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    nodules = [ex.Nodule("s", False, 5.0, (0, 1, 1), np.array([[0, r, c] for r in (1, 2)
                                                                for c in (1, 2)])),
               ex.Nodule("s", True, 9.0, (1, 5, 5), np.array([[1, r, c] for r in (4, 5, 6)
                                                               for c in (4, 5)])),
               ex.Nodule("s", True, 3.0, (1, 0, 0), np.array([[1, 7, 7]]))]
    confusion, votes = ex.evaluate_three_class(model, data, nodules, batch_size=2)
    assert confusion.tolist() == [[128 - 10 - 2, 0, 2], [0, 4, 0], [0, 0, 6]]
    assert votes.tolist() == [[0, 4, 0], [0, 0, 6], [1, 0, 0]]
    assert ex.nodule_calls(votes) == ["benign", "malignant", "missed"]
    rates = ex.class_rates(confusion)
    assert rates["benign"] == {"precision": 1.0, "recall": 1.0}
    assert rates["malignant"]["precision"] == pytest.approx(6 / 8)
    assert rates["nodule"]["recall"] == 1.0


def test_diameter_rule_picks_the_best_cut_on_the_training_nodules():
    nodules = [SimpleNamespace(diameter_mm=d, malignant=m)
               for d, m in ((5.0, False), (12.0, True), (6.0, False), (14.0, True))]
    assert ex.diameter_rule(nodules) == 6.0


# ----------------------------------------------------------------------------- 13.4
@pytest.mark.parametrize("depth", [2, 3])
def test_unet_multiple_is_the_padded_unets_rule(depth, one_torch_thread):
    model = UNet(in_channels=1, n_classes=1, depth=depth, wf=1, padding=True)
    for side in range(56, 72):
        keeps = model(torch.zeros(1, 1, side, side)).shape[-1] == side
        assert keeps == (side % ex.unet_multiple(depth) == 0), side


def test_mixed_sampler_alternates_batches_of_one_shape_in_the_stated_proportion():
    shapes = [(160, 160)] * 5 + [(128, 96)] * 3
    sampler = ex.MixedShapeBatchSampler(50, shapes, crop_batch=8, slice_batch=2,
                                        crops_per_slice=3, seed=1)
    batches = sampler.batches()
    assert [kind for kind, _ in batches] == ["crop"] * 3 + ["slice"] + ["crop"] * 3 + [
        "slice", "crop"]
    assert len(sampler) == len(list(sampler)) == 9
    crops = [i for kind, idx in batches if kind == "crop" for i in idx]
    assert crops == list(range(50))                           # every crop once, in order
    for kind, idx in batches:
        if kind == "slice":
            assert len({shapes[i - 50] for i in idx}) == 1    # one shape per batch
            assert all(50 <= i < 58 for i in idx)
    assert sampler.batches() == batches                       # reproducible per epoch
    many = ex.MixedShapeBatchSampler(400, shapes, 8, 2, 1, seed=1)   # slices cycled
    slice_batches = [idx for kind, idx in many.batches() if kind == "slice"]
    assert len(slice_batches) == 50
    assert all(len({shapes[i - 400] for i in idx}) == 1 for idx in slice_batches)


def test_mixed_loader_trains_on_both_shapes(seg_luna, seg_masks, one_torch_thread):
    train_uids, _val = split_series(seg_luna.series, 3)
    crops = TrainingLuna2dSegmentationDataset(train_uids, seg_luna.series, seg_masks, 12)
    slices = Luna2dSegmentationDataset(train_uids, seg_luna.series, seg_masks)
    shapes = [ex.slice_shape(slices, i) for i in range(len(slices))]
    sampler = ex.MixedShapeBatchSampler(len(crops), shapes, 4, 2, crops_per_slice=1)
    batches = list(DataLoader(ConcatDataset([crops, slices]), batch_sampler=sampler))
    kinds = [tuple(b[0].shape[2:]) for b in batches]
    assert kinds == [(64, 64), shapes[0]] * 3
    model = ex.new_unet(TINY, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first, last = {}, {}
    for _round in range(8):
        for x, label, *_ in batches[:2]:                      # one crop batch, one slice batch
            optimizer.zero_grad()
            loss = fn_weighted_loss(model(x), label.float()).mean()
            loss.backward()
            optimizer.step()
            first.setdefault(x.shape[-1], loss.item())
            last[x.shape[-1]] = loss.item()
    assert all(last[side] < first[side] for side in first) and len(first) == 2


# ----------------------------------------------------------------------------- main
def test_main_answers_every_exercise_at_a_tiny_size(luna_root, tmp_path, capsys,
                                                    one_torch_thread):
    answers = ex.main(["--data-dir", str(luna_root), "--epochs", "1", "--epoch-size", "16",
                       "--batch-size", "8", "--width", "1", "--depth", "2", "--cls-batches", "2",
                       "--cls-batch-size", "4", "--val-stride", "3", "--test-stride", "3",
                       "--test-offset", "1", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert sorted(answers) == [1, 2, 3, 4, 5]
    for label in ("Exercise 13.1", "Exercise 13.2", "Exercise 13.3", "Exercise 13.4",
                  "Exercise 13.5", "a. compromises", "b. training speed", "a. test fraction",
                  "c. the same steps", "skip classification?", "whole-slice batches",
                  "LIDC-IDRI"):
        assert label in out, label
    assert (answers[2]["train"], answers[2]["val"], answers[2]["test"]) == (1, 1, 1)
    assert (tmp_path / "out" / "exercise_13_3_classes.png").stat().st_size > 0
    assert answers[1]["module_vs_callable_weights_max_diff"] == 0.0


@pytest.mark.parametrize("argv, words", [
    (["--exercise", "6"], ["--exercise", "invalid choice: 6"]),
    (["--epochs", "0"], ["--epochs 0: must be at least 1"]),
    (["--exercise", "2", "--test-offset", "12"], ["--test-offset 12: must be in 0"]),
])
def test_bad_flags_are_one_line(argv, words, luna_root, capsys):
    code, err = run_main(ex.main, [*argv, "--data-dir", luna_root], capsys)
    assert_one_error_line(code, err, *words)
