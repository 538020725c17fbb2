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
