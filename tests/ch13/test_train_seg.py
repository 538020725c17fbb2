"""train_seg.py: Dice losses, metrics, overlays, augmentation wiring, end-to-end runs, resume."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ch10_luna.augment import augment_batch, augment_spec
from ch10_luna.checkpoints import save_checkpoint
from ch10_luna.dsets import make_loader
from ch10_luna.model import LunaModel
from ch10_luna.runtime import mixed_precision
from ch13_segment.dsets import TrainingLuna2dSegmentationDataset, split_series
from ch13_segment.model import UNetWrapper
from ch13_segment.train_seg import (
    MODEL_KWARGS,
    SEG_AUGMENTATION,
    dice_loss,
    fn_weighted_loss,
    image_indexes,
    main,
    overlay,
    parse_args,
    segmentation_counts,
    summarize,
    train_one_epoch,
)
from common.data import REPO_ROOT
from common.errors import DataError
from tests.helpers import (
    assert_same_rows,
    kill_after_script,
    kill_env,
    read_jsonl,
    torchrun_nodes,
    torchrun_two_processes,
)

SCRIPT = str(REPO_ROOT / "ch13_segment" / "train_seg.py")




def tiny_args(luna, run_dir, *extra):
    return ["--data-dir", str(luna.root), "--run-dir", str(run_dir), "--epoch-size", "16",
            "--batch-size", "8", "--image-series", "1", "--image-slices", "2", *extra]


# --------------------------------------------------------------------------- loss and metrics
def test_dice_loss_on_hand_cases():
    label = torch.zeros(2, 1, 8, 8)
    label[:, :, 2:5, 2:5] = 1
    assert torch.equal(dice_loss(label.clone(), label), torch.zeros(2))        # perfect
    disjoint = torch.zeros(2, 1, 8, 8)
    disjoint[:, :, 6:, 6:] = 1                                                 # 4 pixels apart
    assert dice_loss(disjoint, label) == pytest.approx(torch.full((2,), 1 - 1 / 14))
    big = torch.zeros(1, 1, 64, 64)
    big[..., :32, :] = 1
    assert float(dice_loss(big, 1 - big)) == pytest.approx(1.0, abs=1e-3)      # ~1 when large
    empty = torch.zeros(1, 1, 8, 8)
    assert float(dice_loss(empty, empty)) == 0.0                               # eps: no 0/0
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    for target in (label, torch.zeros_like(label)):
        logits.grad = None
        fn_weighted_loss(torch.sigmoid(logits), target).mean().backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_fn_weighted_loss_by_hand():
    label = torch.zeros(1, 1, 4, 4)
    label[0, 0, 0, :] = 1                                   # 4 label pixels
    pred = torch.zeros(1, 1, 4, 4)
    pred[0, 0, 0, :2] = 1                                   # 2 found, 2 missed,
    pred[0, 0, 3, :2] = 1                                   # 2 false positives
    dice = 1 - (2 * 2 + 1) / (4 + 4 + 1)
    missed = 1 - (2 * 2 + 1) / (2 + 4 + 1)                  # Dice of pred * label vs label
    assert float(dice_loss(pred, label)) == pytest.approx(dice)
    assert float(fn_weighted_loss(pred, label)) == pytest.approx(dice + 8 * missed)
    # the per-sample loss averages to the book's dice.mean() + 8 * fn.mean()
    preds, labels = torch.rand(3, 1, 6, 6), (torch.rand(3, 1, 6, 6) > 0.7).float()
    book = dice_loss(preds, labels).mean() + 8 * dice_loss(preds * labels, labels).mean()
    assert float(fn_weighted_loss(preds, labels).mean()) == pytest.approx(float(book))


def test_counts_and_summary_on_a_hand_made_example():
    label = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    label[0, 0, 0, :] = True                                # sample 0: 4 label pixels
    pred = torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, :3] = 0.9                                 # 3 TP, 1 FN
    pred[0, 0, 2, 2] = 0.6                                  # 1 FP
    pred[0, 0, 1, 1] = 0.5                                  # not above the threshold
    pred[1, 0, 3, 2:] = 0.7                                 # sample 1: no label, 2 FP
    counts = segmentation_counts(pred, label)
    assert counts.tolist() == [[3, 0], [1, 0], [1, 2]]
    metrics = torch.cat([torch.tensor([[0.2, 0.4], [1.0, 3.0]]), counts])
    s = summarize(metrics)
    assert (s["count/tp"], s["count/fn"], s["count/fp"], s["count/samples"]) == (3, 1, 3, 2)
    assert s["pr/precision"] == pytest.approx(0.5) and s["pr/recall"] == pytest.approx(0.75)
    assert s["pr/f1_score"] == pytest.approx(0.6)
    assert (s["percent_all/tp"], s["percent_all/fn"], s["percent_all/fp"]) == \
        pytest.approx((75.0, 25.0, 75.0))
    assert s["loss/all"] == pytest.approx(0.3) and s["loss/fn_weighted"] == pytest.approx(2.0)
    empty = summarize(torch.zeros(5, 3))                    # nothing labelled or predicted
    assert empty["pr/recall"] == empty["pr/f1_score"] == empty["percent_all/fp"] == 0.0


def test_overlay_colours_and_image_slices():
    ct = np.full((2, 2), -1000.0)                           # black background
    predicted = np.array([[True, True], [False, False]])
    label = np.array([[True, False], [True, False]])
    image = overlay(ct, predicted, label)
    assert image.shape == (2, 2, 3) and image.dtype == np.float32
    assert image[0, 0].tolist() == [0.0, 0.5, 0.0]          # TP green
    assert image[0, 1].tolist() == [0.5, 0.0, 0.0]          # FP red
    assert image[1, 0].tolist() == [0.5, 0.25, 0.0]         # FN orange
    assert image[1, 1].tolist() == [0.0, 0.0, 0.0]
    assert image_indexes(60, 6) == [0, 11, 23, 35, 47, 59]  # first to last, equidistant


# --------------------------------------------------------------------------- augmentation
def test_chapter_13_augmentation_flags_and_the_label_moves_with_the_image():
    spec = lambda argv: augment_spec(SEG_AUGMENTATION, parse_args(argv).augment)  # noqa: E731
    assert spec(["--augmented"]) == SEG_AUGMENTATION
    assert SEG_AUGMENTATION.offset == 0.03 and SEG_AUGMENTATION.noise == 25.0
    only_offset = spec(["--augment-offset"])
    assert (only_offset.offset, only_offset.scale, only_offset.flip) == (0.03, 0.0, False)
    assert spec(["--augment-offset", "--augmented"]) == SEG_AUGMENTATION
    plain = spec([])
    assert not plain.active
    x = torch.full((4, 7, 64, 64), -800.0)
    x[:, :, 20:36, 24:40] = 100.0                           # a dense square in every channel
    label = x[:, 3:4] > 0
    same_x, same_label = augment_batch(x, plain, label=label)
    assert torch.equal(same_x, x) and torch.equal(same_label, label)
    gen = torch.Generator().manual_seed(3)
    moved_x, moved_label = augment_batch(x, only_offset, gen, label=label)
    assert moved_label.dtype == torch.bool and moved_label.shape == label.shape
    assert not torch.equal(moved_x, x)                      # the offset moved the content ...
    assert torch.equal(moved_label, moved_x[:, 3:4] > -350)  # ... and the label with it
    cols = torch.arange(64.0)
    shift = ((moved_label.sum(dim=(1, 2)) * cols).sum(-1) / moved_label.sum(dim=(1, 2, 3))
             - 31.5)
    assert shift.abs().max() <= 0.03 * 32 + 0.5              # at most 0.03 of the half-width


def test_the_loss_falls_over_a_few_steps(seg_luna, seg_masks):
    torch.manual_seed(0)
    train_uids, _ = split_series(seg_luna.series, 10)
    dataset = TrainingLuna2dSegmentationDataset(train_uids, seg_luna.series, seg_masks,
                                                epoch_size=8)
    loader = make_loader(dataset, range(8), 8, 0, torch.device("cpu"))
    model = UNetWrapper(**MODEL_KWARGS)
    optimizer = torch.optim.Adam(model.parameters())
    amp = mixed_precision("cpu", False)
    losses = [float(train_one_epoch(model, loader, optimizer, amp)[1].mean()) for _ in range(6)]
    assert losses[-1] < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def two_epochs(seg_luna, tmp_path_factory):
    """One augmented 2-epoch run validating every epoch: (run_dir, model, history)."""
    run_dir = tmp_path_factory.mktemp("seg_run") / "a"
    model, history = main(tiny_args(seg_luna, run_dir, "--epochs", "2", "--val-cadence", "1",
                                    "--augmented"))
    return run_dir, model, history


def test_main_end_to_end_on_the_tiny_sample(two_epochs):
    run_dir, model, history = two_epochs
    assert isinstance(model, UNetWrapper) and [h["epoch"] for h in history] == [1, 2]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "trn"), (1, "val"), (2, "trn"),
                                                         (2, "val")]
    assert [r["samples"] for r in rows] == [16, 16, 32, 32]
    assert rows[0]["count/samples"] == 16 and rows[1]["count/samples"] == 25  # all val slices
    assert rows[1]["count/tp"] + rows[1]["count/fn"] > 0
    for phase in ("trn", "val"):
        assert list((run_dir / phase).glob("events.out.tfevents.*"))
        pngs = sorted((run_dir / "images" / phase).glob("*.png"))
        # 1 series x 2 slices: prediction and label at epoch 1, prediction at epoch 2
        assert [p.name for p in pngs] == ["e001_0_label_0.png", "e001_0_label_1.png",
                                          "e001_0_prediction_0.png", "e001_0_prediction_1.png",
                                          "e002_0_prediction_0.png", "e002_0_prediction_1.png"]
        image = iio.imread(pngs[0])
        assert image.shape == (160, 160, 3) and image.dtype == np.uint8
    recalls = [h["val"]["pr/recall"] for h in history]
    states = {}
    for name in ("seg_dlwpt.last.state", "seg_dlwpt.best.state"):
        states[name] = state = torch.load(run_dir / name, weights_only=True)
        assert state["model_name"] == "UNetWrapper" and state["optimizer_name"] == "Adam"
        UNetWrapper(**MODEL_KWARGS).load_state_dict(state["model_state"])     # strict
    assert states["seg_dlwpt.last.state"]["epoch"] == 2
    assert states["seg_dlwpt.best.state"]["epoch"] == 1 + recalls.index(max(recalls))
    assert states["seg_dlwpt.best.state"]["best_recall"] == pytest.approx(max(recalls))
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]


def test_resume_after_epoch_1_equals_an_uninterrupted_run(two_epochs, seg_luna, tmp_path):
    run_a = two_epochs[0]
    run_b = tmp_path / "b"
    # validation touches no weights: run b validates only at epoch 1 (cadence 5) to save time
    main(tiny_args(seg_luna, run_b, "--epochs", "1", "--augmented"))
    assert len(read_jsonl(run_b / "metrics.jsonl")) == 2
    main(["--resume", str(run_b / "seg_dlwpt.last.state"), "--epochs", "2"])
    a, b = read_jsonl(run_a / "metrics.jsonl"), read_jsonl(run_b / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in b] == [(1, "trn"), (1, "val"), (2, "trn")]
    state = torch.load(run_b / "seg_dlwpt.last.state", weights_only=True)
    assert state["epoch"] == 2 and state["totalTrainingSamples_count"] == 32
    assert_same_rows(a, b)


def ddp_args(luna, run_dir):
    """Two epochs of 16 crops, 4 per process and batch, validated at epoch 1."""
    return tiny_args(luna, run_dir, "--batch-size", "4", "--epochs", "2")


@pytest.fixture(scope="module")
def ddp_run(seg_luna, tmp_path_factory):
    """An uninterrupted torchrun job of two processes (ddp_args): its run folder."""
    run = tmp_path_factory.mktemp("seg_ddp") / "ddp"
    torchrun_two_processes(SCRIPT, *ddp_args(seg_luna, run))
    return run


def test_two_process_ddp_on_cpu(ddp_run):
    rows = read_jsonl(ddp_run / "metrics.jsonl")                          # rank 0 alone writes
    assert [(r["epoch"], r["phase"], r["count/samples"]) for r in rows] == [
        (1, "trn", 16), (1, "val", 25), (2, "trn", 16)]


def assert_restarted_as_uninterrupted(ddp_run, run_dir, stdout, stderr, marker):
    """A job killed after epoch 1 and restarted by torchrun: the uninterrupted one's rows and
    weights."""
    assert marker.exists() and "exitcode: -9" in stderr and "Traceback" not in stderr
    (line,) = [line for line in stdout.splitlines() if "torchrun restarted job" in line]
    assert line.endswith(f"continuing from {run_dir / 'seg_dlwpt.last.state'} (after epoch 1)")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "trn"), (1, "val"), (2, "trn")]
    assert_same_rows(read_jsonl(ddp_run / "metrics.jsonl"), rows)
    restarted, whole = (torch.load(d / "seg_dlwpt.last.state", weights_only=True)
                        for d in (run_dir, ddp_run))
    assert restarted["epoch"] == whole["epoch"] == 2
    for key, value in whole["model_state"].items():
        torch.testing.assert_close(restarted["model_state"][key], value, msg=key)


@pytest.mark.slow
def test_torchrun_restarts_a_killed_process_after_epoch_1(ddp_run, seg_luna, tmp_path):
    run_dir = tmp_path / "run"
    env = kill_env(run_dir / "seg_dlwpt.last.state", tmp_path / "killed", epoch=1, rank=1)
    result = torchrun_two_processes(kill_after_script(tmp_path), "ch13_segment.train_seg",
                                    *ddp_args(seg_luna, run_dir), max_restarts=2, env=env)
    assert_restarted_as_uninterrupted(ddp_run, run_dir, result.stdout, result.stderr,
                                      tmp_path / "killed")


@pytest.mark.slow
def test_torchrun_restarts_after_one_nodes_process_is_killed(ddp_run, seg_luna, tmp_path):
    run_dir = tmp_path / "shared"                  # both nodes see it: a shared filesystem
    env = kill_env(run_dir / "seg_dlwpt.last.state", tmp_path / "killed", epoch=1, rank=0)
    nodes = torchrun_nodes(kill_after_script(tmp_path), [
        ["ch13_segment.train_seg", *ddp_args(seg_luna, run_dir)]] * 2, max_restarts=2, env=env)
    assert_restarted_as_uninterrupted(ddp_run, run_dir, "".join(r.stdout for r in nodes),
                                      "".join(r.stderr for r in nodes), tmp_path / "killed")


# --------------------------------------------------------------------------- bad input
def test_resume_from_a_classifier_checkpoint_is_one_clear_error(tmp_path):
    model = LunaModel()
    path = save_checkpoint(tmp_path / "cls.state", model, torch.optim.SGD(model.parameters()),
                           {"epochs": 1}, 1, 32)
    with pytest.raises(DataError, match="holds a 'LunaModel', this script trains a UNetWrapper"):
        main(["--resume", str(path)])


def test_resume_from_a_different_unet_is_one_clear_error(seg_luna, tmp_path):
    model = UNetWrapper(**{**MODEL_KWARGS, "depth": 2})
    args = vars(parse_args(tiny_args(seg_luna, tmp_path / "r")))
    path = save_checkpoint(tmp_path / "seg.state", model, torch.optim.Adam(model.parameters()),
                           args, 1, 16)
    with pytest.raises(DataError, match="does not fit UNetWrapper/Adam"):
        main(["--resume", str(path), "--epochs", "2"])
