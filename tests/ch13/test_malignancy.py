"""Chapter 14: malignancy candidate list, datasets, fine-tuning and the training script."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ch10_luna.checkpoints import save_checkpoint
from ch10_luna.dsets import find_luna, split_by_series
from ch10_luna.model import LunaModel
from ch10_luna.runtime import rank_share
from ch10_luna.synthetic import generate_sample
from ch13_segment.dsets_cls import (
    MalignantLunaDataset,
    balanced_kind,
    class_lists,
    read_candidates_ch14,
    read_malignancy_annotations,
)
from ch13_segment.model import UNetWrapper
from ch13_segment.train_malignancy import (
    load_finetune_state,
    load_model,
    main,
    make_optimizer,
    prepare_finetune,
)
from common.data import REPO_ROOT
from common.errors import DataError
from tests.helpers import (
    assert_same_rows,
    kill_after_script,
    kill_env,
    read_jsonl,
    torchrun_two_processes,
)

MAL_CSV = "part2/luna/annotations_with_malignancy.csv"
SCRIPT = REPO_ROOT / "ch13_segment" / "train_malignancy.py"


@pytest.fixture(scope="module")
def mal_folder(tmp_path_factory):
    """4 synthetic CTs with few negatives; series 0 and 2 validate with --val-stride 2."""
    return generate_sample(tmp_path_factory.mktemp("mal") / "luna", n_series=4, seed=5,
                           n_subsets=2, negatives=(10, 15), progress=False)


@pytest.fixture(scope="module")
def mal_luna(mal_folder):
    return find_luna(mal_folder)


@pytest.fixture(scope="module")
def nodule_checkpoint(tmp_path_factory):
    """A LunaModel checkpoint in the book's dict layout (as a nodule classifier run leaves)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "cls.best.state"
    torch.save({"model_state": LunaModel().state_dict(), "model_name": "LunaModel",
                "epoch": 1}, path)
    return path


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_candidate_list_merges_annotations_and_non_nodules(mal_luna):
    candidates = read_candidates_ch14(mal_luna)
    annotations = csv_rows(mal_luna.malignancy_csv)
    negatives = [r for r in csv_rows(mal_luna.candidates_csv) if r["class"] == "0"]
    lists = class_lists(candidates)
    assert len(lists["pos"]) == len(annotations) and len(lists["neg"]) == len(negatives)
    assert len(lists["mal"]) == sum(r["mal_bool"] == "True" for r in annotations) > 0
    assert all(c.has_annotation and c.diameter_mm > 0 for c in lists["pos"])
    assert not any(c.has_annotation or c.is_malignant for c in lists["neg"])
    assert candidates[0].is_malignant and not candidates[-1].is_nodule   # nodules first


def test_lists_are_disjoint_and_split_by_series(mal_luna):
    train, val = split_by_series(read_candidates_ch14(mal_luna), val_stride=2)
    assert not {c.series_uid for c in train} & {c.series_uid for c in val}
    for part in (train, val):
        lists = {k: set(v) for k, v in class_lists(part).items()}
        assert not lists["ben"] & lists["mal"] and not lists["neg"] & lists["pos"]
        assert lists["ben"] | lists["mal"] == lists["pos"]
        assert len(lists["ben"]) + len(lists["mal"]) + len(lists["neg"]) == len(part)


def test_balanced_label_pattern(mal_luna):
    train, _ = split_by_series(read_candidates_ch14(mal_luna), val_stride=2)
    ds = MalignantLunaDataset(train, mal_luna.series, balanced=True, epoch_size=64)
    assert len(ds) == 64
    kinds = [balanced_kind(i) for i in range(8)]
    assert kinds == ["ben", "mal", "neg", "mal", "ben", "mal", "neg", "mal"]
    picked = [ds.candidate(i) for i in range(len(ds))]
    assert all(c.is_malignant == (i % 2 == 1) for i, c in enumerate(picked))
    assert all(c.is_nodule for i, c in enumerate(picked) if i % 4 == 0)
    assert not any(c.is_nodule for i, c in enumerate(picked) if i % 4 == 2)
    # Each list is cycled through whole before any member repeats, in a per-epoch order.
    mal = [picked[i] for i in range(1, 2 * len(ds.mal), 2)]
    assert set(mal) == set(ds.mal)
    first = [ds.candidate(i) for i in range(1, 40, 2)]
    ds.set_epoch(1)
    assert [ds.candidate(i) for i in range(1, 40, 2)] != first
    ds.set_epoch(0)
    assert [ds.candidate(i) for i in range(1, 40, 2)] == first
    crop, label, uid, center_irc = ds[1]                     # ch10's item tuple
    assert crop.shape == (1, 32, 48, 48) and label.tolist() == [0, 1]
    assert uid == ds.candidate(1).series_uid and center_irc.shape == (3,)
    assert ds[2][1].tolist() == [1, 0]                        # a non-nodule: not malignant


def test_unbalanced_is_benign_then_malignant(mal_luna):
    _, val = split_by_series(read_candidates_ch14(mal_luna), val_stride=2)
    ds = MalignantLunaDataset(val, mal_luna.series)
    assert len(ds) == len(ds.ben) + len(ds.mal) == len(class_lists(val)["pos"])
    assert [ds.candidate(i) for i in range(len(ds))] == ds.ben + ds.mal
    assert ds.labels() == [False] * len(ds.ben) + [True] * len(ds.mal)
    assert ds[len(ds) - 1][1].tolist() == [0, 1]
    with pytest.raises(IndexError):
        ds.candidate(len(ds))


def test_bad_mal_bool_is_a_data_error(tmp_path):
    path = tmp_path / "mal.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool\n1.2.3,0,0,0,5,maybe\n")
    with pytest.raises(DataError, match="mal_bool"):
        read_malignancy_annotations(path)


@pytest.mark.parametrize("depth, trainable", [(1, ["head_linear"]),
                                              (2, ["block4", "head_linear"])])
def test_finetune_freezes_all_but_the_last_blocks(nodule_checkpoint, depth, trainable):
    source = torch.load(nodule_checkpoint, weights_only=True)["model_state"]
    torch.manual_seed(0)
    model = LunaModel()
    assert prepare_finetune(model, source, depth) == trainable
    state = model.state_dict()
    assert not torch.equal(state["head_linear.weight"], source["head_linear.weight"])
    assert all(torch.equal(state[k], v) for k, v in source.items()
               if not k.startswith("head_linear"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(model, "sgd", 0.1)
    logits, _ = model(torch.randn(4, 1, 32, 48, 48) * 300)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        block = name.split(".")[0]
        assert p.requires_grad == (block in trainable), name
        assert torch.equal(p, before[name]) == (block not in trainable), name


@pytest.mark.parametrize("make", ["garbage", "unet", "no_state"])
def test_wrong_finetune_checkpoint_is_a_data_error(tmp_path, make):
    path = tmp_path / "wrong.state"
    if make == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif make == "unet":                      # a segmentation checkpoint, with or without name
        torch.save({"model_state": UNetWrapper(in_channels=7, depth=3, wf=4, padding=True,
                                               batch_norm=True).state_dict()}, path)
    else:
        torch.save({"weights": 1}, path)
    with pytest.raises(DataError, match="--finetune"):
        load_model("cpu", load_finetune_state(path), 1, str(path))


def test_main_end_to_end(mal_folder, nodule_checkpoint, tmp_path):
    run = tmp_path / "run"
    common = ["--data-dir", str(mal_folder), "--val-stride", "4", "--batch-size", "4",
              "--epoch-size", "8", "--num-workers", "0"]     # 3 validation nodules
    model, history = main([*common, "--epochs", "2", "--run-dir", str(run), "scratch"])
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(0.0 <= row["val"]["auc"] <= 1.0 for row in history)   # first and last epoch
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "trn"), (1, "val"), (2, "trn"),
                                                        (2, "val")]
    best = torch.load(run / "mal_scratch.best.state", weights_only=True)
    assert best["model_name"] == "LunaModel" and best["best_auc"] == max(
        r["val"]["auc"] for r in history)
    LunaModel().load_state_dict(best["model_state"])
    assert (run / "roc_val.png").stat().st_size > 10_000
    assert list((run / "val").glob("events.out.tfevents.*"))

    tuned = tmp_path / "tuned"
    head_before = torch.load(nodule_checkpoint, weights_only=True)["model_state"]
    model, history = main([*common, "--epochs", "1", "--run-dir", str(tuned), "--finetune",
                           str(nodule_checkpoint)])
    assert torch.equal(model.block1.conv1.weight.cpu(), head_before["block1.conv1.weight"])
    last = torch.load(tuned / "mal_dlwpt.last.state", weights_only=True)
    assert last["args"]["lr"] == 0.003 and last["args"]["optimizer"] == "sgd"
    assert last["optimizer_name"] == "SGD"


def test_main_rejects_garbage_finetune(mal_folder, tmp_path):
    bad = tmp_path / "bad.state"
    bad.write_text("garbage")
    with pytest.raises(DataError, match="not a readable torch file"):
        main(["--data-dir", str(mal_folder), "--val-stride", "2", "--finetune", str(bad),
              "--run-dir", str(tmp_path / "run")])


@pytest.mark.realdata
def test_book_checkpoint_finetunes(book_file):
    path = book_file("part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state")
    model = load_model("cpu", load_finetune_state(path), 2, str(path))
    source = torch.load(path, weights_only=True, map_location="cpu")["model_state"]
    assert torch.equal(model.block3.conv2.weight.contiguous(), source["block3.conv2.weight"])
    assert not torch.equal(model.head_linear.weight, source["head_linear.weight"])
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == \
        {"block4", "head_linear"}


@pytest.mark.realdata
def test_reads_the_book_csv(book_file):
    nodules = read_malignancy_annotations(book_file(MAL_CSV))
    assert len(nodules) == 1182 and sum(n.is_malignant for n in nodules) == 378


# --------------------------------------------------------------------------- --resume
def tuning_args(mal_folder, nodule_checkpoint):
    """A fine-tuning run (block4 + head, Adam: optimizer state to restore) of 8 samples."""
    return ["--data-dir", str(mal_folder), "--val-stride", "4", "--batch-size", "4",
            "--epoch-size", "8", "--finetune", str(nodule_checkpoint), "--finetune-depth", "2",
            "--optimizer", "adam", "tuned"]


@pytest.fixture(scope="module")
def tuned_two_epochs(mal_folder, nodule_checkpoint, tmp_path_factory):
    """The run folder of an uninterrupted 2-epoch tuning_args run (one torch thread)."""
    run_a, threads = tmp_path_factory.mktemp("mal_a") / "a", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([*tuning_args(mal_folder, nodule_checkpoint), "--epochs", "2", "--run-dir",
              str(run_a)])
    finally:
        torch.set_num_threads(threads)
    return run_a


def test_resume_after_epoch_1_equals_an_uninterrupted_run(mal_folder, nodule_checkpoint,
                                                          tuned_two_epochs, tmp_path,
                                                          one_torch_thread):
    """A fine-tuning run stopped after epoch 1 and resumed for epoch 2 logs the rows and ends
    with the weights of a 2-epoch run."""
    common = tuning_args(mal_folder, nodule_checkpoint)
    run_a, run_b = tuned_two_epochs, tmp_path / "b"
    main([*common, "--epochs", "1", "--run-dir", str(run_b)])
    assert len(read_jsonl(run_b / "metrics.jsonl")) == 2
    model, history = main(["--resume", str(run_b / "mal_tuned.last.state"), "--epochs", "2"])
    assert [row["epoch"] for row in history] == [2]
    a, b = read_jsonl(run_a / "metrics.jsonl"), read_jsonl(run_b / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in b] == [(1, "trn"), (1, "val"), (2, "trn"),
                                                     (2, "val")]
    assert len(a) == len(b)
    assert_same_rows(a, b)
    last_a = torch.load(run_a / "mal_tuned.last.state", weights_only=True)
    last_b = torch.load(run_b / "mal_tuned.last.state", weights_only=True)
    assert last_b["epoch"] == 2 and last_b["totalTrainingSamples_count"] == 16
    assert last_b["best_auc"] == pytest.approx(last_a["best_auc"])
    assert last_b["optimizer_name"] == "Adam" and last_b["optimizer_state"]["state"]
    for key, value in last_a["model_state"].items():
        assert torch.allclose(last_b["model_state"][key], value, atol=1e-6), key
    # The frozen blocks stay frozen after the resume: requires_grad and weights as the source.
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == \
        {"block4", "head_linear"}
    source = torch.load(nodule_checkpoint, weights_only=True)["model_state"]
    assert all(torch.equal(last_b["model_state"][k], v) for k, v in source.items()
               if k.split(".")[0] in ("block1", "block2", "block3") and "running" not in k
               and "num_batches" not in k)
    assert not torch.equal(last_b["model_state"]["block4.conv1.weight"],
                           source["block4.conv1.weight"])


def test_killed_after_epoch_1_then_resume_auto_equals_an_uninterrupted_run(
        mal_folder, nodule_checkpoint, tuned_two_epochs, tmp_path, one_torch_thread, capsys):
    """SIGKILL right after epoch 1's checkpoint, then the same command with --resume auto (as
    a scheduler requeues a job): the 2-epoch run's rows and weights."""
    run = tmp_path / "run"
    command = [*tuning_args(mal_folder, nodule_checkpoint), "--epochs", "2", "--run-dir",
               str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           **kill_env(run / "mal_tuned.last.state", tmp_path / "killed", epoch=1)}
    killed = subprocess.run([sys.executable, kill_after_script(tmp_path),
                             "ch13_segment.train_malignancy", *command], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 1]
    _, history = main([*command, "--resume", "auto"])
    assert [row["epoch"] for row in history] == [2]
    assert capsys.readouterr().out.startswith(
        f"--resume auto: continuing from {run / 'mal_tuned.last.state'} (after epoch 1)\n")
    assert_same_rows(read_jsonl(tuned_two_epochs / "metrics.jsonl"),
                     read_jsonl(run / "metrics.jsonl"))
    assert len(read_jsonl(run / "metrics.jsonl")) == 4
    resumed, whole = (torch.load(d / "mal_tuned.last.state", weights_only=True)
                      for d in (run, tuned_two_epochs))
    for key, value in whole["model_state"].items():
        torch.testing.assert_close(resumed["model_state"][key], value, msg=key)


@pytest.mark.parametrize("kind, message", [
    ("unet", "holds a 'UNetWrapper', this script trains a LunaModel"),
    ("nodule classifier", "not a train_malignancy.py checkpoint"),
])
def test_resume_from_the_wrong_checkpoint_is_one_clear_error(tmp_path, capsys, kind, message):
    model = (UNetWrapper(in_channels=7, depth=3, wf=4, padding=True, batch_norm=True)
             if kind == "unet" else LunaModel())
    settings = {"epochs": 1, "comment": "dlwpt"}               # a ch10 / ch13 run's args
    path = save_checkpoint(tmp_path / "other.state", model, torch.optim.SGD(
        model.parameters(), lr=0.1), settings, 1, 32, best_f1=0.5)
    with pytest.raises(DataError, match=message) as caught:
        main(["--resume", str(path)])
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.glob("*/metrics.jsonl"))


# --------------------------------------------------------------------------- torchrun / DDP
def test_rank_share_splits_by_batch_and_keeps_the_classes_mixed():
    order = np.arange(22)
    assert rank_share(order, 0, 1, 4).tolist() == order.tolist()        # one process: all
    shares = [rank_share(order, rank, 2, 4) for rank in range(2)]
    assert shares[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18]
    assert shares[1].tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 19, 20, 21]
    for rank, share in enumerate(rank_share(np.arange(64), r, 2, 2) for r in range(2)):
        kinds = [balanced_kind(int(i)) for i in share]                  # ben mal | neg mal ...
        assert kinds[1::2] == ["mal"] * 16 and set(kinds[0::2]) == {("ben", "neg")[rank]}


def test_two_process_ddp_fine_tuning_on_cpu(mal_folder, mal_luna, nodule_checkpoint,
                                            tmp_path):
    """torchrun with 2 gloo processes, block4 + head trainable, the rest frozen."""
    run = tmp_path / "ddp"
    result = torchrun_two_processes(
        SCRIPT, "--data-dir", mal_folder, "--val-stride", "4", "--batch-size", "2",
        "--epoch-size", "8", "--epochs", "2", "--run-dir", run, "--finetune",
        nodule_checkpoint, "--finetune-depth", "2", "--optimizer", "adam", "tuned")
    for line in ("fine-tuning from", "E1 trn loss", "E2 val loss", "run directory"):
        assert result.stdout.count(line) == 1, result.stdout                # rank 0 alone
    rows = read_jsonl(run / "metrics.jsonl")                                # rank 0 alone
    assert [(r["epoch"], r["phase"], r["samples"]) for r in rows] == [
        (1, "trn", 8), (1, "val", 8), (2, "trn", 16), (2, "val", 16)]
    for row in rows[0::2]:                  # the whole epoch once: 4 malignant, 4 not
        assert (row["count/pos"], row["count/neg"]) == (4, 4)
    val = class_lists(split_by_series(read_candidates_ch14(mal_luna), 4)[1])
    assert len(val["pos"]) == 3
    for row in rows[1::2]:                  # every validation nodule, gathered from both ranks
        assert (row["count/pos"], row["count/neg"]) == (len(val["mal"]), len(val["ben"]))
        assert 0 <= row["auc"] <= 1
    assert (run / "roc_val.png").stat().st_size > 10_000
    assert list((run / "val").glob("events.out.tfevents.*"))
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    last = torch.load(run / "mal_tuned.last.state", weights_only=True)
    assert last["epoch"] == 2 and last["totalTrainingSamples_count"] == 16
    assert not [k for k in last["model_state"] if k.startswith("module.")]
    LunaModel().load_state_dict(last["model_state"])                        # strict
    source = torch.load(nodule_checkpoint, weights_only=True)["model_state"]
    state = last["model_state"]
    frozen = [k for k in source if k.split(".")[0] in ("tail_batchnorm", "block1", "block2",
                                                         "block3") and "running" not in k
              and "num_batches" not in k]
    assert frozen and all(torch.equal(state[k], source[k]) for k in frozen)
    assert not torch.equal(state["block4.conv1.weight"], source["block4.conv1.weight"])
    assert not torch.equal(state["head_linear.weight"], source["head_linear.weight"])
