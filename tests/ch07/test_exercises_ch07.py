"""Chapter 7's exercises: random crops (7.1), MSE on the softmax (7.2), the width sweep (7.3)."""
import math
import pickle
import shutil

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ch01_intro.resnet import count_parameters
from ch07_cifar import exercises_ch07 as ex
from ch07_cifar.cifar import load_cifar2
from ch07_cifar.cifar_files import CIFAR_DIR
from ch07_cifar.train_fc import make_model
from tests.common.cli import assert_one_error_line, run_main


@pytest.fixture(scope="module")
def loaders(tiny_dir):
    train, val, _ = load_cifar2(tiny_dir)
    torch.manual_seed(0)
    return DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=8)


def shifted_by_hand(img, dy, dx, fill):
    """The picture moved down dy and right dx pixels, pixel by pixel, `fill` where nothing is."""
    c, h, w = img.shape
    out = torch.full_like(img, fill)
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[:, y, x] = img[:, y - dy, x - dx]
    return out


def test_pad_and_crop_is_the_image_shifted_with_fill_at_every_offset():
    img = torch.arange(2 * 6 * 7, dtype=torch.float32).view(2, 6, 7) + 1
    padding = 2
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = ex.pad_and_crop(img, top, left, padding, fill=-1.0)
            assert crop.shape == img.shape
            expected = shifted_by_hand(img, padding - top, padding - left, -1.0)
            assert torch.equal(crop, expected), (top, left)


def test_random_crop_draws_every_offset_from_0_to_twice_the_padding():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(3, 8, 8)
    offsets = [ex.random_crop(img, 3, g)[1] for _ in range(600)]
    assert {top for top, _ in offsets} == set(range(7))
    assert {left for _, left in offsets} == set(range(7))


def test_crop_differences_a_and_b():
    img = torch.rand(3, 32, 32) + 1                    # never equal to the fill 0
    answer = ex.crop_differences(img, padding=4, n_reads=6, seed=3)
    assert answer["content_moved"] and answer["reseeded_same"]
    assert answer["distinct_offsets"] > 1               # a second read, another crop
    for (dy, dx), filled, crop in zip(answer["shifts"], answer["filled"], answer["crops"],
                                      strict=True):
        assert max(abs(dy), abs(dx)) <= 4
        assert filled == 32 * abs(dy) + 32 * abs(dx) - abs(dy * dx)
        assert int((crop == 0).all(dim=0).sum()) == filled
    again = ex.random_crop(img, 4, torch.Generator().manual_seed(3))[0]
    assert torch.equal(again, answer["crops"][0])


def test_random_cropped_dataset_crops_anew_at_every_read():
    items = [(torch.rand(3, 32, 32) + 1, label) for label in (0, 1, 1)]
    data = ex.RandomCropped(items, padding=4)
    torch.manual_seed(0)
    reads = [data[1] for _ in range(5)]
    assert len(data) == 3 and all(label == 1 for _, label in reads)
    assert all(img.shape == (3, 32, 32) for img, _ in reads)
    assert len({tuple(img.flatten()[:64].tolist()) for img, _ in reads}) > 1


def test_mse_on_softmax_against_torch_and_the_gradient_formulas():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(5, 2), dim=1)
    target = torch.tensor([0, 1, 1, 0, 1])
    one_hot = nn.functional.one_hot(target, 2).float()
    expected = nn.MSELoss(reduction="sum")(log_probs.exp(), one_hot) / 5
    assert float(ex.mse_on_softmax(log_probs, target)) == pytest.approx(float(expected))
    rows = ex.logit_gradients((0.5, 0.1, 0.001))
    for p, g_nll, g_mse in rows:      # d/dz of -log p and of 2 (1 - p)^2, p = sigmoid(z0 - z1)
        assert g_nll == pytest.approx(math.sqrt(2) * (1 - p), rel=1e-4)
        assert g_mse == pytest.approx(4 * math.sqrt(2) * p * (1 - p) ** 2, rel=1e-3)


def test_fc_model_width_and_the_book_count():
    assert count_parameters(ex.fc_model(512)) == 1_574_402 == count_parameters(make_model()[0])
    for width in (1, 16):
        assert count_parameters(ex.fc_model(width)) == 3075 * width + 2
    assert ex.fc_model(4)(torch.zeros(2, 3072)).exp().sum(dim=1).tolist() == pytest.approx([1, 1])


def test_first_epoch_reaching():
    assert ex.first_epoch_reaching([0.5, 0.95, 0.97], 0.95) == 2
    assert ex.first_epoch_reaching([0.5, 0.9], 0.95) is None


def test_both_losses_fall_and_a_seed_repeats_the_runs(loaders):
    runs = ex.compare_losses(*loaders, epochs=3, device="cpu", lr=0.05, seed=0)
    for history in runs.values():
        assert len(history["loss"]) == len(history["val"]) == 3
        assert history["loss"][-1] < history["loss"][0]
    assert ex.compare_losses(*loaders, epochs=3, device="cpu", lr=0.05, seed=0) == runs


def test_crops_training_and_capacity_sweep_rows(loaders):
    rows = ex.crops_training(*loaders, epochs=1, device="cpu")
    assert set(rows) == {"plain", "crops"} and rows["plain"] != rows["crops"]
    sweep = ex.capacity_sweep(*loaders, widths=(8, 2), epochs=1, device="cpu")
    assert [r["width"] for r in sweep] == [8, 2]
    assert [r["params"] for r in sweep] == [3075 * 8 + 2, 3075 * 2 + 2]
    assert all(r["gap"] == pytest.approx(r["train"] - r["val"]) for r in sweep)


def test_main_answers_every_exercise(tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    answers = ex.main([str(a) for a in ("--data-dir", tiny_root, "--synthetic", "--device", "cpu",
                                        "--epochs", "1", "--widths", "4", "1", "--out", out)])
    printed = capsys.readouterr().out
    assert set(answers) == {1, 2, 3}
    for label in ("7.1a", "7.1b", "7.1c", "7.2", "7.3", "p(right class)", "width | params"):
        assert label in printed
    assert sorted(p.name for p in out.iterdir()) == ["capacity.png", "crops.png",
                                                     "mse_vs_nll.png"]
    assert [r["width"] for r in answers[3]["rows"]] == [4, 1]


@pytest.mark.parametrize("argv, words", [
    (["--exercise", "4"], ["--exercise", "invalid choice: 4"]),
    (["--widths", "16", "0"], ["--widths 0", "at least 1"]),
    (["--padding", "0"], ["--padding 0", "at least 1"]),
])
def test_bad_flags_are_one_line(tiny_root, tmp_path, capsys, argv, words):
    code, err = run_main(ex.main, ["--data-dir", tiny_root, "--out", tmp_path / "o", *argv],
                         capsys)
    assert_one_error_line(code, err, *words)
    assert not (tmp_path / "o").exists()


def test_a_bad_batch_is_one_line_and_nothing_written(tiny_dir, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(tiny_dir, root / CIFAR_DIR)
    (root / CIFAR_DIR / "data_batch_1").write_bytes(pickle.dumps({b"labels": [0]}))
    code, err = run_main(ex.main, ["--data-dir", root, "--out", tmp_path / "o"], capsys)
    assert_one_error_line(code, err, "data_batch_1", "b'data'")
    assert not (tmp_path / "o").exists()
