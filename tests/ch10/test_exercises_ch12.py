"""Chapter 12's exercises: F-beta against scikit-learn, the WeightedRandomSampler's class shares,
the ratio orders, mixup of nodules, the fixed-normalization model, the forward hooks and the
TensorBoard keys of the weights and feature maps."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import fbeta_score

from ch10_luna import exercises_ch12 as ex
from ch10_luna.dsets import LunaDataset, find_luna
from ch10_luna.model import LunaModel
from ch10_luna.train_cls import make_datasets
from tests.common.cli import assert_one_error_line, run_main


def metrics_rows(label, pred):
    return torch.stack([torch.as_tensor(label, dtype=torch.float32),
                        torch.as_tensor(pred, dtype=torch.float32), torch.zeros(len(label))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fbeta_equals_scikit_learn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    label = rng.random(200) < 0.3
    pred = rng.random(200)
    s = ex.summarize_fbeta(metrics_rows(label, pred))
    for beta in (2, 0.5, 1):
        expected = fbeta_score(label, pred > 0.5, beta=beta, zero_division=0)
        assert s[ex.fbeta_key(beta)] == pytest.approx(expected, abs=1e-12)
        assert ex.fbeta(s["count/tp"], s["count/fp"], s["count/fn"], beta) == pytest.approx(
            expected, abs=1e-12)
    assert ex.fbeta(0, 0, 0, 2) == 0.0 == fbeta_score([0, 0], [0, 0], beta=2, zero_division=0)


def test_the_sampler_draws_each_class_about_half_the_time():
    labels = [True] * 5 + [False] * 995
    n = 20_000
    drawn = np.array(list(ex.class_balanced_sampler(labels, n, seed=0)))
    positives = int((drawn < 5).sum())
    # Binomial(n, 1/2): standard deviation sqrt(n / 4); five of them, whatever the seed.
    assert abs(positives - n / 2) <= 5 * math.sqrt(n / 4)
    assert set(drawn[drawn < 5]) == set(range(5))
    assert list(ex.class_balanced_sampler(labels, 50, 3)) == list(
        ex.class_balanced_sampler(labels, 50, 3))                      # seeded


def test_ratio_orders_put_one_positive_then_ratio_negatives():
    labels = np.array([True] * 10 + [False] * 90)
    order = ex.ratio_order(labels, 3, 40, seed=1, epoch=2)
    assert len(order) == 40
    assert labels[order].tolist() == ([True, False, False, False] * 10)
    assert sorted(order[::4]) == list(range(10))                       # every nodule once
    assert len(set(order[labels[order] == 0])) == 30
    assert list(ex.ratio_order(labels, 1, 6)) != list(ex.ratio_order(labels, 1, 6, epoch=2))
    ramp = [ex.ramp_ratio(e, 5, 70) for e in range(1, 6)]
    assert ramp[0] == 1 and ramp == sorted(ramp) and 1 < ramp[-1] < 70


def test_mix_labels_follow_the_mixing_weight():
    x = torch.tensor([[10.0, 20.0], [0.0, 40.0]])
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]])                         # a nodule, a non-nodule
    mixed, soft = ex.mix(x, y, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.3]))
    assert torch.allclose(mixed[0], torch.tensor([3.0, 34.0]))
    assert torch.allclose(soft[0], torch.tensor([0.7, 0.3]))
    assert torch.equal(mixed[1], x[1]) and torch.equal(soft[1], y[1])


def test_mixup_blends_only_nodules_with_other_nodules():
    x = torch.randn(6, 1, 2, 3, 3)
    label = torch.tensor([[0, 1], [1, 0], [0, 1], [0, 1], [1, 0], [0, 1]])
    out, soft, index, partner, lam = ex.mixup_positives(x, label, np.random.default_rng(0))
    assert sorted(index.tolist()) == [0, 2, 3, 5] and sorted(partner.tolist()) == [0, 2, 3, 5]
    assert (index != partner).all()
    assert torch.equal(out[[1, 4]], x[[1, 4]])                         # non-nodules untouched
    for i, j, w in zip(index, partner, lam, strict=True):
        assert torch.allclose(out[i], w * x[i] + (1 - w) * x[j], atol=1e-6)
    assert ((lam > 0) & (lam < 1)).all()
    assert torch.equal(soft, label.float())                            # both nodules: still 1
    one = torch.tensor([[0, 1], [1, 0]])
    assert torch.equal(ex.mixup_positives(x[:2], one, np.random.default_rng(0))[0], x[:2])


def test_the_fixed_normalization_model_keeps_the_books_names():
    model = ex.FixedNormLunaModel(ex.FixedNorm(-500.0, 400.0))
    book = LunaModel().state_dict()
    assert set(model.state_dict()) == {k for k in book if not k.startswith("tail_batchnorm")}
    model.load_state_dict({k: v for k, v in book.items() if not k.startswith("tail_")})
    logits, probs = model(torch.full((2, 1, 32, 48, 48), -500.0))
    assert logits.shape == probs.shape == (2, 2)
    x = torch.tensor([-900.0, -500.0, 300.0])
    assert torch.allclose(ex.FixedNorm(-500.0, 400.0)(x), torch.tensor([-1.0, 0.0, 2.0]))
    ends = torch.tensor([-1.0, 1.0])
    assert torch.allclose(ex.sqrt_hu(ends), ends)
    assert ex.sigmoid_window(torch.tensor(-0.4)) == 0


def test_forward_hooks_catch_every_block_and_go_away():
    model = LunaModel()
    caught = ex.block_outputs(model, torch.zeros(1, 1, 32, 48, 48))
    assert {k: tuple(v.shape) for k, v in caught.items()} == {
        "block1": (1, 8, 16, 24, 24), "block2": (1, 16, 8, 12, 12),
        "block3": (1, 32, 4, 6, 6), "block4": (1, 64, 2, 3, 3)}
    assert all(not getattr(model, name)._forward_hooks for name in ex.BLOCKS)
    grid = ex.feature_grid(caught["block1"])
    assert grid.shape == (26, 8 * 26) and grid.min() >= 0 and grid.max() <= 1


def test_code_lines_leave_out_the_docstring_and_comments():
    def two():
        """A docstring."""
        a = 1
        # a comment
        return a
    assert ex.code_lines(two) == 2


def test_crop_stats(tiny_luna):
    train = make_datasets(find_luna(tiny_luna), val_stride=2)[0]
    crops = torch.stack([train[i][0] for i in range(5)]).double()
    mean, std = ex.crop_stats(train, range(5), batch_size=2)
    assert mean == pytest.approx(float(crops.mean()))
    assert std == pytest.approx(float(crops.std(unbiased=False)))


def test_main_answers_every_exercise(tiny_luna, tmp_path, capsys):
    results = ex.main(["--data-dir", str(tiny_luna.parent), "--val-stride", "2", "--epochs",
                       "1", "--epoch-size", "2", "--val-size", "4", "--batch-size", "2",
                       "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    for label in ("Exercise 12.1", "f2 ", "Exercise 12.2", "WeightedRandomSampler",
                  "Exercise 12.3", "1:20", "ramp", "Exercise 12.4", "mixup of nodules",
                  "Exercise 12.5", "sqrt of shifted HU", "Exercise 12.6", "answer:"):
        assert label in out, label
    assert results[2]["loads"] == 0                           # the weights opened no CT
    names = [f"weights/{n}" for n, _ in LunaModel().named_parameters()]
    assert results[6]["histograms"] == sorted(names) and results[6]["steps"] == [1]
    assert results[6]["images"] == [f"features/{b}" for b in ex.BLOCKS]
    assert (tmp_path / "fbeta.png").stat().st_size and (tmp_path / "features.png").stat().st_size
    rows = (tmp_path / "fbeta" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all("pr/f2_score" in row for row in rows)


def test_bad_flags_are_one_line(capsys):
    assert_one_error_line(*run_main(ex.main, ["--epochs", "0"], capsys), "--epochs 0")
    assert_one_error_line(*run_main(ex.main, ["--exercise", "7"], capsys), "--exercise")


def test_a_dataset_without_nodules_in_validation_still_scores(tiny_luna):
    train, val = make_datasets(find_luna(tiny_luna), val_stride=2)
    negatives = LunaDataset([c for c in val.candidates if not c.is_nodule][:4], val.series_paths)
    setup = ex.Setup(train, negatives, 1, 4, 4, 1e-3, 0, "cpu")
    r = ex.run(setup, "no nodules")
    assert math.isnan(r.scores["auc"]) and r.scores["pr/f2_score"] == 0.0
