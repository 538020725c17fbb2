"""Helpers the training-script tests share (ch10 and ch13 write the same run files)."""
import json
import os
import subprocess
import sys

import pytest
import torch


def read_jsonl(path):
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in open(path)]


def assert_same_rows(expected_rows, actual_rows):
    """metrics.jsonl rows equal key by key: strings exactly, numbers to float precision."""
    for row_a, row_b in zip(expected_rows, actual_rows):
        assert row_a.keys() == row_b.keys()
        for key, value in row_a.items():
            expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-5,
                                                                          abs=1e-6)
            assert row_b[key] == expected, key


def torchrun_two_processes(script, *args, max_restarts=0, env=None):
    """`torchrun --standalone --nproc_per_node=2 [--max-restarts N] script args` on CPU (gloo),
    one thread each, `env` added to the environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--max-restarts", str(max_restarts), str(script), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def save_model_state(model, path):
    """A minimal checkpoint in the book's dict (model_state, model_name, epoch): str(path)."""
    torch.save({"model_state": model.state_dict(), "model_name": type(model).__name__,
                "epoch": 1}, path)
    return str(path)


def free_port():
    """A TCP port free on every address at this moment, for a rendezvous to bind next: one
    below the kernel's range for outgoing connections (ip_local_port_range), so that no
    connection made meanwhile (by this suite, or another on the machine) can be given it,
    picked at random among them so that two suites at once do not try the same; one the kernel
    picks where the range cannot be read. Tried on the wildcard address, IPv6 and IPv4 alike,
    as the rendezvous's store binds it."""
    import random

    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 1024
    ports = random.Random().sample(range(1024, low), min(100, low - 1024)) if low > 1024 else []
    for port in [*ports, 0]:
        bound = _bound_everywhere(port)
        if bound is not None:
            return bound
    raise OSError("no free TCP port")


def _bound_everywhere(port):
    """`port` (0: one the kernel picks) if it can be bound on every address, else None."""
    import socket

    try:
        s, host = socket.socket(socket.AF_INET6), "::"
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)     # IPv4's addresses too
    except OSError:                                                  # no IPv6 here
        s, host = socket.socket(socket.AF_INET), ""
    with s:
        try:
            s.bind((host, port))
        except OSError:                  # taken
            return None
        return s.getsockname()[1]


def torchrun_nodes(script, args_by_node, timeout=300, max_restarts=0, env=None):
    """One `torchrun --nnodes N --nproc_per_node 1 --rdzv-backend c10d [--max-restarts N]`
    launcher per entry of `args_by_node` (that node's script arguments), started together on
    loopback as N machines would be, one thread each (gloo on CPU), `env` added to the
    environment; their CompletedProcess, all checked to succeed.

    Output goes to files, not pipes: a node blocked on a full pipe would stall the others'
    collectives."""
    import tempfile
    import time
    import uuid

    endpoint = f"127.0.0.1:{free_port()}"
    rdzv_id = f"test-{uuid.uuid4().hex[:8]}"                  # a fresh rendezvous every call
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    launched = []
    for args in args_by_node:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(args_by_node)),
               "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-id", rdzv_id, "--max-restarts", str(max_restarts), str(script),
               *map(str, args)]
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        launched.append((cmd, subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env),
                         out, err))
    processes, deadline, results = [p for _, p, _, _ in launched], time.monotonic() + timeout, []
    try:                     # until all are done, one fails (the rest would wait) or time is up
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline \
                and not any(p.poll() for p in processes):
            time.sleep(0.2)
    finally:
        for cmd, process, out, err in launched:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.seek(0)
            err.seek(0)
            results.append(subprocess.CompletedProcess(cmd, process.returncode, out.read(),
                                                       err.read()))
            out.close()
            err.close()
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    return results


# A trainer run as `python kill_after.py MODULE ARGS...` (MODULE: ch10_luna.train_cls, ...) whose
# process of rank $KILL_RANK kills itself with SIGKILL once the run's checkpoint $KILL_CHECKPOINT
# holds epoch $KILL_EPOCH, batch $KILL_BATCH (0: that epoch's end): at the step right after
# that checkpoint (the mid-epoch saver's after_batch, or the end of epoch's barrier), the other
# ranks blocked in their next collective, so no later checkpoint can land first. It kills
# once ($KILL_MARKER records it) and on a first start only. The training is untouched.
KILL_AFTER_CHECKPOINT = """
import importlib, os, signal, sys, time
from pathlib import Path
import torch
from common.errors import run_cli

trainer = importlib.import_module(sys.argv[1])
epoch, batch = int(os.environ["KILL_EPOCH"]), int(os.environ["KILL_BATCH"])
checkpoint, marker = Path(os.environ["KILL_CHECKPOINT"]), Path(os.environ["KILL_MARKER"])
victim = int(os.environ.get("RANK", "0")) == int(os.environ["KILL_RANK"])


def written():
    try:
        state = torch.load(checkpoint, weights_only=True)
    except Exception:                   # not there yet
        return False
    return (state["epoch"], state.get("batch", 0)) == (epoch, batch)


def kill_if_there(at_epoch, at_batch):
    if (at_epoch, at_batch) != (epoch, batch) or not victim or marker.exists() \\
            or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    deadline = time.monotonic() + 120
    while not written():                # rank 0 writes it; another rank waits for it
        if time.monotonic() > deadline:
            sys.exit(f"kill_after: {checkpoint} never held epoch {epoch}, batch {batch}")
        time.sleep(0.05)
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


if hasattr(trainer, "mid_epoch_saver"):
    saver = trainer.mid_epoch_saver

    def counting_saver(*args, **kwargs):
        after_batch, done = saver(*args, **kwargs), []

        def then_maybe_kill(rows):
            after_batch(rows)
            done.append(1)
            kill_if_there(args[6], len(done))          # args[6]: the epoch
        return then_maybe_kill if after_batch else None
    trainer.mid_epoch_saver = counting_saver

barrier, epochs_done = trainer.barrier, []


def counting_barrier():
    barrier()
    epochs_done.append(1)
    kill_if_there(len(epochs_done), 0)


trainer.barrier = counting_barrier
run_cli(trainer.main, sys.argv[2:])
"""


def kill_after_script(folder):
    """KILL_AFTER_CHECKPOINT written to `folder`/kill_after.py: its path."""
    path = folder / "kill_after.py"
    path.write_text(KILL_AFTER_CHECKPOINT)
    return path


def kill_env(checkpoint, marker, epoch, batch=0, rank=0):
    """The environment for KILL_AFTER_CHECKPOINT: rank `rank` killed once `checkpoint` holds
    (epoch, batch)."""
    return {"KILL_CHECKPOINT": str(checkpoint), "KILL_MARKER": str(marker),
            "KILL_EPOCH": str(epoch), "KILL_BATCH": str(batch), "KILL_RANK": str(rank)}
