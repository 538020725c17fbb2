"""train_cls.py: metrics, end-to-end runs, exact resume after a kill, DDP, and bad input."""
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ch10_luna.checkpoints import save_checkpoint
from ch10_luna.dsets import epoch_order, locate_luna
from ch10_luna.model import LunaModel
from ch10_luna.runtime import rank_share
from ch10_luna.train_cls import main, parse_args, summarize
from common.data import REPO_ROOT
from common.errors import DataError
from tests.helpers import assert_same_rows, read_jsonl, torchrun_two_processes

SCRIPT = str(REPO_ROOT / "ch10_luna" / "train_cls.py")


def tiny_args(luna, run_dir, *extra):
    return ["--data-dir", str(luna), "--run-dir", str(run_dir), "--epoch-size", "32",
            "--batch-size", "8", *extra]




def test_summarize_counts_on_a_hand_made_tensor():
    # labels 1 1 0 0 0, predictions .9 .2 .7 .1 .3 -> TP 1, FN 1, FP 1, TN 2
    metrics = torch.tensor([[1, 1, 0, 0, 0], [.9, .2, .7, .1, .3], [.1, 1.6, 1.2, .1, .4]])
    s = summarize(metrics)
    assert (s["count/tp"], s["count/fn"], s["count/fp"], s["count/tn"]) == (1, 1, 1, 2)
    assert s["pr/precision"] == s["pr/recall"] == pytest.approx(0.5)
    assert s["pr/f1_score"] == pytest.approx(0.5)
    assert s["correct/all"] == pytest.approx(60.0)
    assert s["correct/neg"] == pytest.approx(200 / 3) and s["correct/pos"] == pytest.approx(50)
    assert s["loss/pos"] == pytest.approx(0.85) and s["loss/neg"] == pytest.approx(1.7 / 3)


def test_summarize_agrees_with_sklearn_on_random_predictions():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    label = (torch.rand(1000, generator=generator) < 0.1).float()
    pred = torch.rand(1000, generator=generator)
    s = summarize(torch.stack([label, pred, torch.zeros(1000)]), threshold=0.3)
    truth, guess = label.numpy() > 0.5, pred.numpy() > 0.3
    assert s["pr/precision"] == pytest.approx(sklearn_metrics.precision_score(truth, guess))
    assert s["pr/recall"] == pytest.approx(sklearn_metrics.recall_score(truth, guess))
    assert s["pr/f1_score"] == pytest.approx(sklearn_metrics.f1_score(truth, guess))
    assert s["correct/all"] == pytest.approx(100 * sklearn_metrics.accuracy_score(truth, guess))
    (tn, fp), (fn, tp) = sklearn_metrics.confusion_matrix(truth, guess)
    assert (s["count/tn"], s["count/fp"], s["count/fn"], s["count/tp"]) == (tn, fp, fn, tp)


def test_summarize_without_positives_gives_no_nan_and_no_warning(recwarn):
    s = summarize(torch.tensor([[0.0, 0.0], [0.2, 0.7], [0.1, 1.2]]))
    assert s["count/pos"] == 0 and s["pr/recall"] == 0.0 and s["loss/pos"] == 0.0
    assert s["pr/f1_score"] == 0.0 and s["correct/pos"] == 0.0
    assert all(v == v for v in s.values())                            # no NaN
    assert not recwarn.list
    assert summarize(torch.zeros(3, 0))["correct/all"] == 0.0


def test_main_end_to_end_on_a_tiny_sample(tiny_luna, tmp_path):
    model, history = main(tiny_args(tiny_luna, tmp_path / "run", "--epochs", "2",
                                    "--augmented"))
    assert isinstance(model, LunaModel) and [h["epoch"] for h in history] == [1, 2]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "trn"), (1, "val"), (2, "trn"),
                                                         (2, "val")]
    assert rows[0]["count/pos"] == rows[0]["count/neg"] == 16       # balanced by default
    assert rows[-1]["samples"] == 64
    assert list((tmp_path / "run" / "trn").glob("events.out.tfevents.*"))
    assert list((tmp_path / "run" / "val").glob("events.out.tfevents.*"))
    for name in ("cls_dlwpt.last.state", "cls_dlwpt.best.state"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert state["model_name"] == "LunaModel"
        assert state["optimizer_name"] == "Adam"                  # the sample's default
        LunaModel().load_state_dict(state["model_state"])
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]


KILL_AFTER_SAVING = textwrap.dedent("""
    import os, signal, sys
    from ch10_luna import train_cls
    saver = train_cls.mid_epoch_saver

    def dying_saver(every, path, model, optimizer, settings, proc, epoch, *rest, **extra):
        after_batch = saver(every, path, model, optimizer, settings, proc, epoch, *rest, **extra)
        done = []

        def then_die(rows):
            after_batch(rows)
            done.append(rows)
            if (epoch, len(done)) == (2, 3):         # the checkpoint of batch 3 is on disk
                os.kill(os.getpid(), signal.SIGKILL)
        return then_die

    train_cls.mid_epoch_saver = dying_saver
    train_cls.main(sys.argv[1:])
""")


KILLED_RUN = ["--epochs", "2", "--epoch-size", "64", "--batch-size", "8", "--augmented",
              "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def killed_mid_epoch(tiny_luna, tmp_path_factory):
    """(the rows of a KILLED_RUN nothing stopped, the folder of the same run killed with
    SIGKILL right after its checkpoint of epoch 2, batch 3)."""
    tmp = tmp_path_factory.mktemp("killed")
    common = ["--data-dir", str(tiny_luna), *KILLED_RUN]
    main([*common, "--run-dir", str(tmp / "a")])
    run_b = tmp / "b"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVING, *common, "--run-dir",
                             str(run_b)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]                 # SIGKILLed
    state = torch.load(run_b / "cls_dlwpt.last.state", weights_only=True)
    assert (state["epoch"], state["batch"]) == (2, 3)
    assert len(read_jsonl(run_b / "metrics.jsonl")) == 2                  # epoch 1 only
    return read_jsonl(tmp / "a" / "metrics.jsonl"), run_b


@pytest.mark.parametrize("how", ["--resume PATH", "--resume auto"])
def test_resumed_after_a_kill_mid_epoch_equals_an_uninterrupted_run(
        killed_mid_epoch, tiny_luna, tmp_path, capsys, how):
    """`--resume PATH`, or the same command again with `--resume auto` (a requeued job)."""
    rows, killed = killed_mid_epoch
    run_b = tmp_path / "b"
    shutil.copytree(killed, run_b)
    last = run_b / "cls_dlwpt.last.state"
    if how == "--resume PATH":
        state = torch.load(last, weights_only=True)
        state["args"]["run_dir"] = str(run_b)          # the copy: a resumed run writes there
        torch.save(state, last)
        main(["--resume", str(last)])
    else:
        main(["--data-dir", str(tiny_luna), *KILLED_RUN, "--run-dir", str(run_b), "--resume",
              "auto"])
        assert capsys.readouterr().out.startswith(
            f"--resume auto: continuing from {last} (epoch 2, after batch 3)\n")
    b = read_jsonl(run_b / "metrics.jsonl")
    assert len(b) == 4
    assert_same_rows(rows, b)


def test_resume_auto_with_nothing_to_resume_starts_the_run_and_says_so(tiny_luna, tmp_path,
                                                                       capsys):
    from ch10_luna.checkpoints import parse_run_args
    from ch10_luna.train_cls import RESUME_KEEPS

    argv = ["--data-dir", str(tiny_luna), "--run-dir", str(tmp_path / "new"), "--resume", "auto"]
    args, saved, run_dir = parse_run_args(parse_args, argv, "LunaModel", RESUME_KEEPS, "cls")
    assert (saved, run_dir, args.resume) == (None, tmp_path / "new", "auto")
    assert capsys.readouterr().out == (f"--resume auto: no checkpoint in {tmp_path / 'new'} "
                                       "yet; starting the run from its beginning\n")


def test_two_process_ddp_on_cpu(tiny_luna, tmp_path):
    torchrun_two_processes(SCRIPT, *tiny_args(tiny_luna, tmp_path / "ddp"), "--epochs", "1")
    rows = read_jsonl(tmp_path / "ddp" / "metrics.jsonl")                 # rank 0 alone writes
    assert [r["phase"] for r in rows] == ["trn", "val"]
    assert rows[0]["count/pos"] + rows[0]["count/neg"] == 32              # both ranks' halves
    _, history = main(tiny_args(tiny_luna, tmp_path / "single", "--epochs", "1"))
    val = history[0]["val"]
    assert rows[1]["count/pos"] + rows[1]["count/neg"] == val["count/pos"] + val["count/neg"]


@pytest.mark.parametrize("forced", [False, True])
def test_synthetic_fallback_is_announced(tiny_luna, tmp_path, forced):
    shutil.copytree(tiny_luna, tmp_path / "synthetic" / "luna")     # as if generated before
    said = []
    luna = locate_luna(str(tmp_path), forced, announce=said.append)
    assert luna.synthetic and luna.root == tmp_path / "synthetic" / "luna"
    assert "SYNTHETIC DATA" in said[-1] and "python -m common.data download" in said[-1]
    assert ("--synthetic given" in said[-1]) == forced


def test_a_real_luna_folder_wins_over_the_sample(tiny_luna, tmp_path):
    shutil.copytree(tiny_luna, tmp_path / "luna")
    (tmp_path / "luna" / "SYNTHETIC.json").unlink()                   # now it passes for LUNA16
    luna = locate_luna(str(tmp_path), False, announce=print)
    assert not luna.synthetic and luna.root == tmp_path / "luna"


def test_the_book_sgd_is_the_default_on_luna16_and_adam_on_the_sample(tiny_luna, tmp_path):
    shutil.copytree(tiny_luna, tmp_path / "luna")
    (tmp_path / "luna" / "SYNTHETIC.json").unlink()
    main(["--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--epoch-size", "16",
          "--batch-size", "8", "--val-stride", "4"])
    state = torch.load(tmp_path / "r" / "cls_dlwpt.last.state", weights_only=True)
    assert state["optimizer_name"] == "SGD"
    assert state["optimizer_state"]["param_groups"][0]["momentum"] == 0.99


# --------------------------------------------------------------------------- bad input
def test_data_dir_that_does_not_exist():
    with pytest.raises(DataError, match="--data-dir /no/such/dir does not exist"):
        main(["--data-dir", "/no/such/dir"])


def test_a_broken_luna_folder_is_an_error_not_a_fallback(tmp_path):
    (tmp_path / "luna").mkdir()
    with pytest.raises(DataError, match="missing candidates.csv, annotations.csv"):
        main(["--data-dir", str(tmp_path)])


def test_the_error_is_one_line_and_a_nonzero_exit():
    result = subprocess.run([sys.executable, SCRIPT, "--data-dir", "/no/such/dir"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --data-dir /no/such/dir does not exist"


def test_resume_from_a_checkpoint_of_another_model(tmp_path):
    other = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "seg.state", other, torch.optim.Adam(other.parameters()),
                    {}, 1, 10)
    with pytest.raises(DataError, match="holds a 'Linear', this script trains a LunaModel"):
        main(["--resume", str(tmp_path / "seg.state")])


def test_resume_from_garbage_and_from_a_missing_file(tmp_path):
    (tmp_path / "junk.state").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable torch file"):
        main(["--resume", str(tmp_path / "junk.state")])
    with pytest.raises(DataError, match="no such file"):
        main(["--resume", str(tmp_path / "none.state")])


def test_resume_from_a_checkpoint_whose_weights_do_not_fit(tiny_luna, tmp_path):
    model = LunaModel(conv_channels=4)
    save_checkpoint(tmp_path / "small.state", model, torch.optim.SGD(model.parameters(), lr=.1),
                    vars(parse_args(["--data-dir", str(tiny_luna)])), 1, 32)
    with pytest.raises(DataError, match="does not fit LunaModel"):
        main(["--resume", str(tmp_path / "small.state"), "--run-dir", str(tmp_path / "r")])


def test_ddp_ranks_get_whole_batches_of_the_balanced_mix():
    """Every-other-sample sharding would give one rank all the positives of a balanced epoch."""
    labels = torch.tensor([1] * 5 + [0] * 95)
    order = epoch_order(labels, 64, True, 0, 1)
    assert [int(labels[i]) for i in order[:4]] == [1, 0, 1, 0]                 # pos, neg, ...
    shares = [rank_share(order, rank, 2, 8) for rank in range(2)]
    assert sorted(np.concatenate(shares).tolist()) == sorted(order.tolist())   # each once
    for share in shares:
        for batch in np.split(share, len(share) // 8):
            assert sum(int(labels[i]) for i in batch) == 4                     # half positive


def test_fold_validates_on_one_subset(tiny_luna, tmp_path):
    from ch10_luna.dsets import find_luna, read_candidates

    luna = find_luna(tiny_luna)
    held_out = {uid for uid, path in luna.series.items() if path.parent.name == "subset1"}
    expected = sum(c.series_uid in held_out for c in read_candidates(luna))
    _, history = main(tiny_args(tiny_luna, tmp_path / "run", "--fold", "1"))
    val = history[0]["val"]
    assert val["count/pos"] + val["count/neg"] == expected
    state = torch.load(tmp_path / "run" / "cls_dlwpt.last.state", weights_only=True)
    assert state["args"]["fold"] == 1                            # a resumed run keeps its fold


@pytest.mark.slow          # torch.compile of the forward and backward: tens of seconds
def test_compiled_training_learns_alike_and_saves_the_books_names(tiny_luna, tmp_path):
    _, eager = main(tiny_args(tiny_luna, tmp_path / "eager", "--epochs", "1"))
    _, compiled = main(tiny_args(tiny_luna, tmp_path / "compiled", "--epochs", "1",
                                 "--compile"))
    state = torch.load(tmp_path / "compiled" / "cls_dlwpt.last.state", weights_only=True)
    LunaModel().load_state_dict(state["model_state"])                  # strict: no _orig_mod
    assert state["args"]["compile"] is True
    for phase in ("trn", "val"):                     # the same steps, rounded differently
        assert compiled[0][phase]["loss/all"] == pytest.approx(eager[0][phase]["loss/all"],
                                                               rel=0.05)
