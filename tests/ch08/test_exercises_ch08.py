"""Chapter 8's exercises: other kernels in Net (8.1) and images edited to fool a model (8.2)."""
import pickle
import shutil

import pytest
import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from ch07_cifar.cifar_files import CIFAR_DIR
from ch07_cifar.synthetic import SYNTHETIC_DIR
from ch08_convnets import exercises_ch08 as ex
from ch08_convnets.models import BOOK_NET_FILE, Net
from tests.common.cli import assert_one_error_line, run_main


def test_parameter_counts_are_the_books():
    assert count_parameters(ex.NetKernel(3, 1)) == 18_090 == count_parameters(Net())
    assert count_parameters(ex.NetKernel(5, 2)) == 20_906
    assert count_parameters(ex.NetKernel((1, 3), (0, 1))) == 17_034


def test_netkernel_3x3_is_the_chapters_net():
    torch.manual_seed(0)
    net, ours = Net().eval(), ex.NetKernel(3, 1).eval()
    ours.load_state_dict(net.state_dict())               # strict: the same names and shapes
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours(x), net(x))


@pytest.mark.parametrize("kernel_size, padding, n_flat", [
    (5, 2, 512), ((1, 3), (0, 1), 512), (5, 1, 8 * 6 * 6), (3, 0, 8 * 6 * 6),
    ((1, 3), 1, 8 * 9 * 8),
])
def test_netkernel_sizes_its_linear_layer_from_the_convs(kernel_size, padding, n_flat):
    model = ex.NetKernel(kernel_size, padding)
    assert model.n_flat == n_flat
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def test_conv_output_size_is_conv2ds():
    for size in (7, 32):
        for k in (1, 2, 3, 4, 5):
            for p in (0, 1, 2):
                for stride in (1, 2, 3):
                    if size + 2 * p < k:
                        continue
                    conv = nn.Conv2d(1, 1, k, stride=stride, padding=p)
                    got = conv(torch.zeros(1, 1, size, size)).shape[-1]
                    assert ex.conv_output_size(size, k, p, stride) == got, (size, k, p, stride)


def test_the_1x3_kernel_keeps_the_size_and_sees_only_its_row():
    model = ex.NetKernel((1, 3), (0, 1))
    assert model.conv1(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 32, 32)
    assert ex.footprint(model, "conv1")[0] == (1, 3)
    assert ex.footprint(model)[0] == (2, 8)               # the 2x2 pooling adds one row
    assert ex.footprint(ex.NetKernel(3, 1), "conv1")[0] == (3, 3)
    assert ex.footprint(ex.NetKernel(3, 1))[0] == (8, 8)
    assert ex.footprint(ex.NetKernel(5, 2))[0] == (14, 14)


class Linear(nn.Module):
    """logit(airplane) - logit(bird) = slope * (sum of the pixels - offset): each signed step
    of STEP on all 12 pixels of a (3, 2, 2) image adds slope * 12 * STEP = 1 to it."""

    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        z = (x.flatten(1).sum(dim=1) - self.offset) / (12 * ex.STEP)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_fool_takes_the_steps_a_known_model_needs_within_its_budget():
    images = torch.full((3, 3, 2, 2), 0.5)
    images[2] += 4 * ex.STEP                       # this one starts at logit 4: p 0.982
    model = Linear(offset=6.0)                     # logit 0 (p 0.5) for the first two images
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    edited, steps, prob = ex.fool(model, images, ex.AIRPLANE, mean, std, eps=1.0)
    assert steps.tolist() == [3, 3, 0]             # logit 3 is the first above log(19) = 2.94
    assert bool((prob > ex.CONFIDENCE).all())
    torch.testing.assert_close(edited[0], images[0] + 3 * ex.STEP)
    torch.testing.assert_close(edited[2], images[2])
    tight, steps, prob = ex.fool(model, images[:1], ex.AIRPLANE, mean, std, eps=2 * ex.STEP,
                                 max_steps=10)
    assert steps.tolist() == [-1] and float(prob[0]) < ex.CONFIDENCE   # 2 steps' budget
    assert float((tight - images[:1]).abs().max()) <= 2 * ex.STEP + 1e-7
    to_bird, steps, _ = ex.fool(model, images[:1], ex.BIRD, mean, std, eps=1.0)
    assert steps.tolist() == [3] and bool((to_bird < images[:1]).all())


def test_fool_keeps_pixels_in_range_and_within_eps():
    torch.manual_seed(0)
    model = Net().eval()
    images = torch.rand(3, 3, 32, 32)
    images[0, :, :4] = 0.0
    images[1, :, :4] = 1.0
    eps = 3 / 255
    edited, steps, prob = ex.fool(model, images, ex.BIRD, (0.5,) * 3, (0.25,) * 3, eps,
                                  max_steps=20)
    assert edited.min() >= 0 and edited.max() <= 1
    assert float((edited - images).abs().max()) <= eps + 1e-6
    assert steps.shape == prob.shape == (3,)


def test_perturbation_and_summary_on_a_hand_made_case():
    original = torch.zeros(3, 3, 2, 2)
    edited = original.clone()
    edited[0, 0, 0, 0], edited[0, 1, 1, 1] = 0.3, -0.4
    l_inf, l2 = ex.perturbation(edited, original)
    assert l_inf.tolist() == pytest.approx([0.4, 0, 0])
    assert l2.tolist() == pytest.approx([0.5, 0, 0])
    summary = ex.summarize_fooling(torch.tensor([2, -1, 4]), edited, original)
    assert summary == {"success": pytest.approx(2 / 3), "median_steps": 3, "mean_l2": 0.25}
    none = ex.summarize_fooling(torch.tensor([-1]), edited[:1], original[:1])
    assert none["median_steps"] is None and none["success"] == 0


def row(n, params, steps, val=0.9):
    part = {"success": 1.0, "median_steps": steps, "mean_l2": 0.1}
    return {"n_chans1": n, "params": params, "val": val, "a": part, "b": part}


def test_capacity_verdict_names_the_net_with_the_fewest_steps():
    assert "lower-capacity" in ex.capacity_verdict([row(8, 100, 3), row(32, 900, 9)])
    assert "higher-capacity" in ex.capacity_verdict([row(8, 100, 9), row(32, 900, 3)])
    assert "No difference" in ex.capacity_verdict([row(8, 100, 5), row(32, 900, 5)])
    assert "differ too" in ex.capacity_verdict([row(8, 100, 3, 0.7), row(32, 900, 9, 0.95)])


def test_main_answers_every_exercise(tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    answers = ex.main([str(a) for a in (
        "--data-dir", tiny_root, "--synthetic", "--device", "cpu", "--epochs", "1",
        "--n-chans", "4", "8", "--images", "2", "--max-steps", "5", "--no-book-net",
        "--out", out)])
    printed = capsys.readouterr().out
    assert set(answers) == {1, 2}
    for label in ("8.1a", "8.1b/e", "8.1c", "8.1d", "8.2a", "8.2b", "8.2c", "NetWidth(8)"):
        assert label in printed
    assert answers[1]["params"] == {"3x3": 18_090, "5x5": 20_906, "1x3": 17_034}
    assert answers[1]["sizes_agree"] and answers[1]["conv1_shape_1x3"] == (1, 16, 32, 32)
    assert [r["n_chans1"] for r in answers[2]["rows"]] == [4, 8]
    assert "NetWidth(4) trained here" in answers[2]["model"]
    assert "footprints.png" in {p.name for p in out.iterdir()}


@pytest.mark.realdata
def test_the_books_net_is_the_one_fooled_when_its_file_is_there(book_file, tiny_dir, tmp_path,
                                                                capsys):
    root = tmp_path / "root"
    shutil.copytree(tiny_dir, root / SYNTHETIC_DIR)
    (root / BOOK_NET_FILE).parent.mkdir(parents=True)
    shutil.copy(book_file(BOOK_NET_FILE), root / BOOK_NET_FILE)
    answers = ex.main([str(a) for a in (
        "--data-dir", root, "--synthetic", "--exercise", "2", "--epochs", "1", "--n-chans", "4",
        "--images", "2", "--max-steps", "3", "--out", tmp_path / "out")])
    assert answers[2]["model"].startswith("the book's trained Net")


@pytest.mark.parametrize("argv, words", [
    (["--exercise", "3"], ["--exercise", "invalid choice: 3"]),
    (["--eps", "0"], ["--eps 0.0", "above 0"]),
    (["--n-chans", "8", "1"], ["--n-chans 1", "at least 2"]),
])
def test_bad_flags_are_one_line(tiny_root, tmp_path, capsys, argv, words):
    code, err = run_main(ex.main, ["--data-dir", tiny_root, "--out", tmp_path / "o", *argv],
                         capsys)
    assert_one_error_line(code, err, *words)
    assert not (tmp_path / "o").exists()


def test_a_bad_batch_is_one_line_and_nothing_written(tiny_dir, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(tiny_dir, root / CIFAR_DIR)
    (root / CIFAR_DIR / "test_batch").write_bytes(pickle.dumps([1, 2]))
    code, err = run_main(ex.main, ["--data-dir", root, "--out", tmp_path / "o"], capsys)
    assert_one_error_line(code, err, "test_batch", "expected a dict")
    assert not (tmp_path / "o").exists()
