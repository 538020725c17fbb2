"""Runs that torchrun may restart, or a scheduler requeue: which folder and which checkpoint a
(re)started process takes (checkpoints.resume_from, run_directory), every process taking the
same one (same_checkpoint), and metrics.jsonl left as an uninterrupted run's. The restarts
themselves, killed and restarted under torchrun: tests/ch10/test_multinode.py,
tests/ch13/test_train_seg.py."""
import pytest
import torch

from ch10_luna import checkpoints
from ch10_luna.checkpoints import Run, log_epoch, parse_run_args, same_checkpoint
from ch10_luna.runtime import Proc
from ch10_luna.train_cls import RESUME_KEEPS, main, parse_args
from common.errors import DataError, run_cli
from tests.helpers import read_jsonl


@pytest.fixture
def torchrun(monkeypatch):
    """This process as torchrun starts a worker: `torchrun(run_id, restart, max_restarts)`."""
    def started(run_id, restart=0, max_restarts=2):
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))
        monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", str(max_restarts))
    return started


def parse(argv):
    return parse_run_args(parse_args, argv, "LunaModel", RESUME_KEEPS, "cls")


def checkpoint_of(run_dir, run_id):
    """A train_cls end-of-epoch checkpoint in `run_dir`, saved by torchrun job `run_id`."""
    from ch10_luna.model import LunaModel

    model = LunaModel()
    settings = {**vars(parse_args(["--run-dir", str(run_dir)])), "epoch_size": 32}
    state = {"model_state": model.state_dict(), "model_name": "LunaModel", "epoch": 1,
             "totalTrainingSamples_count": 32, "args": settings, "best_f1": 0.5,
             "optimizer_state": torch.optim.Adam(model.parameters()).state_dict()}
    if run_id:
        state["torchrun_run_id"] = run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, run_dir / "cls_dlwpt.last.state")
    return run_dir / "cls_dlwpt.last.state"


def test_resume_auto_needs_a_run_dir(capsys):
    with pytest.raises(SystemExit) as caught:
        run_cli(main, ["--resume", "auto"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == ("error: --resume auto: give --run-dir too, the run "
                                       "folder whose last checkpoint to continue (a requeued "
                                       "job names the same one)\n")


def test_a_job_torchrun_may_restart_names_its_folder_by_its_run_id(torchrun, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setattr(checkpoints, "runs_dir", lambda prefix: tmp_path / prefix)
    torchrun("luna/cls 1", max_restarts=0)
    assert parse([])[2].parent == tmp_path / "ch10"                  # no restarts: by time
    assert parse([])[2].name.endswith("-dlwpt") and "luna" not in parse([])[2].name
    torchrun("luna/cls 1")
    assert parse([])[2] == tmp_path / "ch10" / "luna_cls_1-dlwpt"    # found again by a restart
    torchrun("none")                                  # torchrun's default --rdzv-id
    with pytest.raises(DataError, match="^--run-dir: torchrun --max-restarts may restart this "
                                        "run; give --run-dir"):
        parse([])
    assert parse(["--run-dir", str(tmp_path / "mine")])[2] == tmp_path / "mine"


@pytest.mark.parametrize("restart", [0, 1])
def test_a_started_again_job_continues_from_its_own_last_checkpoint(torchrun, tmp_path, capsys,
                                                                    restart):
    """Whatever the restart count says (each machine counts its own restarts: a healthy node's
    processes restarted with the others may see 0), the checkpoint this job wrote is taken."""
    last = checkpoint_of(tmp_path / "run", "job-7")
    torchrun("job-7", restart)
    args, saved, run_dir = parse(["--run-dir", str(tmp_path / "run")])
    assert (saved["epoch"], args.resume, run_dir) == (1, str(last), tmp_path / "run")
    assert capsys.readouterr().out == (f"torchrun restarted job job-7: continuing from {last} "
                                       "(after epoch 1)\n")
    parse(["--run-dir", str(tmp_path / "run"), "--resume", "auto"])   # the README's command
    assert capsys.readouterr().out.startswith("torchrun restarted job job-7: continuing from")


def test_another_jobs_checkpoint_is_not_continued_without_resume_auto(torchrun, tmp_path,
                                                                      capsys):
    last = checkpoint_of(tmp_path / "run", "job-6")
    torchrun("job-7")
    assert parse(["--run-dir", str(tmp_path / "run")])[1] is None        # starts over
    checkpoint_of(tmp_path / "plain", None)                              # not under torchrun
    assert parse(["--run-dir", str(tmp_path / "plain")])[1] is None
    torchrun("job-7", restart=1)
    assert parse(["--run-dir", str(tmp_path / "empty")])[1] is None
    assert capsys.readouterr().out == (f"torchrun restart 1 of job job-7: no checkpoint of it "
                                       f"in {tmp_path / 'empty'} yet; starting the run from its "
                                       "beginning\n")
    assert parse(["--run-dir", str(tmp_path / "run"), "--resume", "auto"])[1]["epoch"] == 1
    assert str(last) in capsys.readouterr().out


def test_every_process_must_resume_from_the_same_checkpoint(monkeypatch):
    """Two machines that do not share the run folder: one finds the checkpoint, one none."""
    state = {"epoch": 2, "totalTrainingSamples_count": 64, "time": "t"}
    proc = Proc("cpu", 0, 2, print)
    monkeypatch.setattr(checkpoints, "gather_objects", lambda mine: [mine, mine])
    same_checkpoint(state, "r/x.state", proc)                            # agreed
    monkeypatch.setattr(checkpoints, "gather_objects", lambda mine: [mine, None])
    with pytest.raises(DataError) as caught:
        same_checkpoint(state, "r/x.state", proc)
    assert str(caught.value) == ("--resume r/x.state: the processes found different checkpoints "
                                 "(rank 0: after epoch 2; rank 1: none): every machine must see "
                                 "the same run folder (--run-dir on a shared filesystem)")


def test_rows_a_killed_run_logged_past_its_checkpoint_are_logged_again(tmp_path):
    """Killed after logging epoch 2's rows but before its checkpoint, resumed from epoch 1's:
    epoch 2's rows are replaced, not repeated."""
    def logged():
        return [(r["epoch"], r["phase"], r["loss"]) for r in read_jsonl(tmp_path / "metrics.jsonl")]

    run = Run(tmp_path, {}, None, None)
    for epoch, phase in [(1, "trn"), (1, "val"), (2, "trn"), (2, "val")]:
        log_epoch(run, epoch, phase, {"loss": float(epoch)}, 32 * epoch)
    log_epoch(run, 2, "trn", {"loss": 20.0}, 64)
    assert logged() == [(1, "trn", 1.0), (1, "val", 1.0), (2, "trn", 20.0)]
    log_epoch(run, 2, "val", {"loss": 21.0}, 64)
    log_epoch(run, 3, "trn", {"loss": 30.0}, 96)
    assert logged() == [(1, "trn", 1.0), (1, "val", 1.0), (2, "trn", 20.0), (2, "val", 21.0),
                        (3, "trn", 30.0)]
    log_epoch(run, 1, "val", {"loss": 11.0}, 32)          # from an older checkpoint: its val
    assert logged() == [(1, "trn", 1.0), (1, "val", 11.0)]
