"""train_cls.py past one machine: two torchrun "nodes" on loopback (c10d rendezvous, one process
each) train as one node of two processes does, and a run resumed with another number of
processes refuses a mid-epoch checkpoint in one line and continues from an end-of-epoch one.
torchrun --max-restarts: a process killed mid-epoch (one of two, or one node's), the job
restarts and continues from the last checkpoint to the uninterrupted run's metrics and weights."""
import os
import subprocess
import sys
import textwrap
from collections import namedtuple

import pytest
import torch

from ch10_luna.train_cls import main
from common.data import REPO_ROOT
from tests.helpers import (
    assert_same_rows,
    kill_after_script,
    kill_env,
    read_jsonl,
    torchrun_nodes,
    torchrun_two_processes,
)

pytestmark = pytest.mark.slow           # four torchrun jobs of two processes

SCRIPT = REPO_ROOT / "ch10_luna" / "train_cls.py"
# train_cls.py, also keeping a copy of its mid-epoch checkpoint (the end of the epoch overwrites
# the .last.state it is written to); the training itself is untouched.
KEEP_MID_EPOCH = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    from ch10_luna import checkpoints, train_cls
    save = checkpoints.save_checkpoint

    def keeping(path, *args, **extra):
        written = save(path, *args, **extra)
        if extra.get("batch"):
            shutil.copyfile(path, Path(path).with_name("mid_epoch.state"))
        return written

    checkpoints.save_checkpoint = keeping
    train_cls.main(sys.argv[1:])
""")

Runs = namedtuple("Runs", ["nodes", "node_dirs", "written", "rows", "one_node", "one_rows"])


def run_args(luna, run_dir):
    """One epoch of 32 samples in batches of 8 per process (2 per process with 2 processes),
    a mid-epoch checkpoint after every batch."""
    return ["--data-dir", luna, "--run-dir", run_dir, "--epoch-size", "32", "--batch-size", "8",
            "--epochs", "1", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def runs(tiny_luna, tmp_path_factory):
    """The same run on two loopback nodes (each with its own --run-dir, to see who writes) and
    on one node of two processes; the rows are read before any test resumes them."""
    tmp = tmp_path_factory.mktemp("multinode")
    node_dirs = [tmp / "node0", tmp / "node1"]
    nodes = torchrun_nodes(SCRIPT, [run_args(tiny_luna, d) for d in node_dirs])
    written = [d for d in node_dirs if d.exists()]
    (tmp / "keep_mid_epoch.py").write_text(KEEP_MID_EPOCH)
    torchrun_two_processes(tmp / "keep_mid_epoch.py", *run_args(tiny_luna, tmp / "one_node"))
    return Runs(nodes, node_dirs, written,
                read_jsonl(written[0] / "metrics.jsonl") if len(written) == 1 else None,
                tmp / "one_node", read_jsonl(tmp / "one_node" / "metrics.jsonl"))


def test_two_nodes_train_as_one_node_of_two_processes(runs):
    assert len(runs.written) == 1, runs.written              # rank 0's node alone writes
    (run_dir,) = runs.written
    assert sorted(os.listdir(run_dir)) == ["cls_dlwpt.best.state", "cls_dlwpt.last.state",
                                           "metrics.jsonl", "trn", "val"]
    assert sum("x 2 processes" in r.stdout for r in runs.nodes) == 1   # one world of 2
    assert [r["phase"] for r in runs.rows] == ["trn", "val"]
    assert runs.rows[0]["count/pos"] + runs.rows[0]["count/neg"] == 32   # both ranks' halves
    assert len(runs.one_rows) == len(runs.rows)
    assert_same_rows(runs.one_rows, runs.rows)               # same ranks, batches and seeds
    multi = torch.load(run_dir / "cls_dlwpt.last.state", weights_only=True)
    single = torch.load(runs.one_node / "cls_dlwpt.last.state", weights_only=True)
    assert multi["totalTrainingSamples_count"] == single["totalTrainingSamples_count"] == 32
    for key, value in single["model_state"].items():
        torch.testing.assert_close(multi["model_state"][key], value, msg=key)


def test_a_mid_epoch_checkpoint_of_two_processes_is_refused_by_one(runs):
    mid = runs.one_node / "mid_epoch.state"
    state = torch.load(mid, weights_only=True)
    assert (state["epoch"], state["batch"], len(state["trn_partial"])) == (1, 1, 2)
    before = sorted(os.listdir(runs.one_node)), (runs.one_node / "metrics.jsonl").read_text()
    result = subprocess.run([sys.executable, str(SCRIPT), "--resume", str(mid)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --resume {mid}: saved in the middle of epoch 1")
    assert "by 2 process(es)" in line and line.endswith("not 1")       # both counts
    after = sorted(os.listdir(runs.one_node)), (runs.one_node / "metrics.jsonl").read_text()
    assert after == before                                            # nothing written


def test_an_end_of_epoch_checkpoint_of_two_processes_continues_with_one(runs):
    assert len(runs.written) == 1
    (run_dir,) = runs.written
    last = run_dir / "cls_dlwpt.last.state"
    assert "batch" not in torch.load(last, weights_only=True)         # saved at the epoch's end
    _, history = main(["--resume", str(last), "--epochs", "2"])       # one process
    assert [h["epoch"] for h in history] == [2]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "trn"), (1, "val"), (2, "trn"),
                                                         (2, "val")]
    assert_same_rows(runs.rows, rows[:2])                             # the first epoch kept
    assert rows[2]["count/pos"] + rows[2]["count/neg"] == 32 and rows[2]["samples"] == 64
    assert torch.load(last, weights_only=True)["epoch"] == 2


# --------------------------------------------------------------------------- torchrun restarts
def assert_restarted_as_uninterrupted(runs, run_dir, said, marker):
    """The killed and restarted job's run folder against the uninterrupted one-node run's."""
    assert marker.exists()                                        # the kill did land
    assert "exitcode: -9" in said.stderr                           # torchrun saw the SIGKILL
    assert "Traceback" not in said.stderr          # the survivor: one line, then restarted
    assert "Exception raised from" not in said.stderr     # nor C++ frames from a stale store
    (line,) = [line for line in said.stdout.splitlines() if "torchrun restarted job" in line]
    assert line.endswith(f"continuing from {run_dir / 'cls_dlwpt.last.state'} (epoch 1, "
                         "after batch 1)")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert len(rows) == len(runs.one_rows) == 2
    assert_same_rows(runs.one_rows, rows)
    restarted = torch.load(run_dir / "cls_dlwpt.last.state", weights_only=True)
    single = torch.load(runs.one_node / "cls_dlwpt.last.state", weights_only=True)
    assert (restarted["epoch"], "batch" in restarted) == (1, False)
    for key, value in single["model_state"].items():
        torch.testing.assert_close(restarted["model_state"][key], value, msg=key)


def test_torchrun_restarts_a_killed_process_and_the_job_ends_as_uninterrupted(
        runs, tiny_luna, tmp_path):
    run_dir = tmp_path / "run"
    env = kill_env(run_dir / "cls_dlwpt.last.state", tmp_path / "killed", epoch=1, batch=1,
                   rank=1)                         # rank 1, right after batch 1's checkpoint
    result = torchrun_two_processes(kill_after_script(tmp_path), "ch10_luna.train_cls",
                                    *run_args(tiny_luna, run_dir), max_restarts=2, env=env)
    assert_restarted_as_uninterrupted(runs, run_dir, result, tmp_path / "killed")


def test_torchrun_restarts_after_one_nodes_process_is_killed(runs, tiny_luna, tmp_path):
    run_dir = tmp_path / "shared"                  # both nodes see it: a shared filesystem
    env = kill_env(run_dir / "cls_dlwpt.last.state", tmp_path / "killed", epoch=1, batch=1,
                   rank=0)                         # the node of rank 0, which writes
    nodes = torchrun_nodes(kill_after_script(tmp_path), [
        ["ch10_luna.train_cls", *run_args(tiny_luna, run_dir)]] * 2, max_restarts=2, env=env)
    said = [r for r in nodes if "torchrun restarted job" in r.stdout]
    assert len(said) == 1                          # rank 0's node says it, once
    stderr = "".join(r.stderr for r in nodes)
    assert_restarted_as_uninterrupted(runs, run_dir, subprocess.CompletedProcess(
        [], 0, said[0].stdout, stderr), tmp_path / "killed")
