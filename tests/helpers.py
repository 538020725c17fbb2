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


def torchrun_two_processes(script, *args):
    """`torchrun --standalone --nproc_per_node=2 script args` on CPU (gloo), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def save_model_state(model, path):
    """A minimal checkpoint in the book's dict (model_state, model_name, epoch): str(path)."""
    torch.save({"model_state": model.state_dict(), "model_name": type(model).__name__,
                "epoch": 1}, path)
    return str(path)


def free_port():
    """A TCP port free on 127.0.0.1 at this moment (for a rendezvous to bind next)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_nodes(script, args_by_node, timeout=300):
    """One `torchrun --nnodes N --nproc_per_node 1 --rdzv-backend c10d` launcher per entry of
    `args_by_node` (that node's script arguments), started together on loopback as N machines
    would be, one thread each (gloo on CPU); their CompletedProcess, all checked to succeed.

    Output goes to files, not pipes: a node blocked on a full pipe would stall the others'
    collectives."""
    import tempfile
    import time
    import uuid

    endpoint = f"127.0.0.1:{free_port()}"
    rdzv_id = f"test-{uuid.uuid4().hex[:8]}"                  # a fresh rendezvous every call
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = []
    for args in args_by_node:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(args_by_node)),
               "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-id", rdzv_id, str(script), *map(str, args)]
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
