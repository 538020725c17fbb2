"""Fixtures for the chapter 15 tests: a classifier with unsaturated outputs, crops, live servers
(in a thread, or the scripts as their own processes)."""
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from ch10_luna.model import LunaModel
from ch15_deploy.classifier import (
    BOOK_CHECKPOINT,
    EXAMPLE,
    hu_like_crop,
    load_classifier,
    load_example,
)
from ch15_deploy.flask_server import create_app
from ch15_deploy.wsgi_serving import serve_until_stopped, start_server
from common.data import REPO_ROOT


@pytest.fixture(scope="session")
def hu_model():
    """An untrained LunaModel whose input batch norm expects HU (mean -500, std 400).

    With the default running statistics (0, 1) raw HU drive the logits into the hundreds and
    every probability to exactly 0 or 1, which would hide a wrong answer.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LunaModel()
    model.tail_batchnorm.running_mean.fill_(-500.0)
    model.tail_batchnorm.running_var.fill_(400.0**2)
    return model.eval()


@pytest.fixture
def crop():
    return hu_like_crop(3)


@pytest.fixture
def book_model(book_file):
    return load_classifier(book_file(BOOK_CHECKPOINT))


@pytest.fixture
def book_example(book_file):
    """(crop, one-hot label, series uid, center) and the data root it came from."""
    path = book_file(EXAMPLE)
    data_dir = path.parent.parent
    return load_example(data_dir), data_dir


@pytest.fixture
def serve():
    """serve(app) -> base URL of the app behind waitress on 127.0.0.1 (free port), in a thread,
    as flask_server.py serves it."""
    running = []

    def start(app):
        served = start_server(app, "127.0.0.1", 0)
        thread = threading.Thread(target=serve_until_stopped, args=(served,), daemon=True)
        thread.start()
        running.append((served, thread))
        return f"http://127.0.0.1:{served['port']}"

    yield start
    for served, thread in running:
        served["stop"].set()
        thread.join(timeout=10)


@pytest.fixture
def app_client(hu_model):
    return create_app(hu_model).test_client()


def free_port():
    """A port free at this moment, for a server that is refused before it listens (a port
    another process takes meanwhile would not change its answer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVING = re.compile(r"^serving .* on http://127\.0\.0\.1:(\d+)\b", re.M)


@pytest.fixture
def server_process(tmp_path):
    """server_process(module, *flags) -> a ch15 server script running as its own process on
    127.0.0.1, on the port it picked itself (--port 0: no other process can hold it first),
    once it says it is serving: a dict with `process`, `port`, `url` and `stop()` (SIGTERM,
    then its exit status, stdout and stderr). Killed at teardown if alive."""
    started = []

    def start(module, *flags, startup_s=120):
        n = len(started)
        out, err = tmp_path / f"{n}.out", tmp_path / f"{n}.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "--port", "0", *map(str, flags)],
                cwd=REPO_ROOT, stdout=stdout, stderr=stderr)
        started.append(process)

        def stop(timeout=60):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=timeout)
            return code, out.read_text(), err.read_text()

        deadline = time.monotonic() + startup_s          # a bound on a hang, not on speed
        while not (serving := SERVING.search(out.read_text())):
            if process.poll() is not None:
                pytest.fail(f"{module} exited {process.returncode}: {err.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{module} did not say it serves within {startup_s} s")
            time.sleep(0.05)
        port = int(serving[1])
        return {"process": process, "port": port, "url": f"http://127.0.0.1:{port}",
                "stop": stop}

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
