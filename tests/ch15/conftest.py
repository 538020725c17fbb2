"""Fixtures for the chapter 15 tests: a classifier with unsaturated outputs, crops, live servers."""
import threading

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
from ch15_deploy.flask_server import create_app, start_server


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
    """serve(app) -> base URL of a real werkzeug server on 127.0.0.1 (free port), in a thread."""
    running = []

    def start(app):
        server = start_server(app, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def app_client(hu_model):
    return create_app(hu_model).test_client()
