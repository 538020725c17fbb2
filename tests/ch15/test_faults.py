"""Faults at the two servers (issue 18): SIGTERM with requests in flight, 300 clients at once,
malformed HTTP, broken checkpoints refused at start-up, and never a NaN sent as JSON.

The process tests start the scripts themselves on a free 127.0.0.1 port (conftest's
server_process), each bounded in time; the rest run in this process.
"""
import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
from collections import Counter

import aiohttp
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from torch import nn

from ch01_intro.cyclegan import ResNetGenerator
from ch10_luna.model import LunaModel
from ch15_deploy import batching_server, flask_server, wsgi_serving
from ch15_deploy.classifier import hu_like_crop
from ch15_deploy.wire import NOT_FINITE
from common.data import REPO_ROOT
from tests.ch15 import hostile
from tests.ch15.conftest import free_port
from tests.common.cli import assert_one_error_line, run_main

SERVERS = {   # name: (module, flags serving an untrained classifier, its checkpoint flag)
    "flask": ("ch15_deploy.flask_server", ["--random-weights"], "--model"),
    "batching": ("ch15_deploy.batching_server", ["--random-weights", "--no-image"],
                 "--cls-model"),
}
SMALL_QUEUE = {"flask": ["--threads", "2", "--max-queue", "8"], "batching": ["--max-queue", "8"]}
CROP = hu_like_crop(0).numpy().astype("<f4").tobytes()
HEADERS = {"Content-Type": "application/octet-stream", "X-Shape": "1,32,48,48"}


def strict_json(data):
    """json.loads that refuses NaN and Infinity, as every JSON parser but Python's does."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(data, parse_constant=refuse)


def check_answer(status, retry_after, body):
    """A 200 with P(nodule) in [0, 1] (strict JSON), or a 503 with Retry-After and a message."""
    if status == 200:
        assert 0 <= strict_json(body)["prob_nodule"] <= 1
    else:
        assert status == 503 and retry_after == "1" and strict_json(body)["error"], body


@pytest.mark.parametrize("server", list(SERVERS))
def test_sigterm_answers_every_request_in_flight_then_exits_0(server, server_process):
    module, flags, _ = SERVERS[server]
    live = server_process(module, *flags)
    n, sent, results = 30, threading.Semaphore(0), {}

    def client(i):
        connection = http.client.HTTPConnection("127.0.0.1", live["port"], timeout=60)
        try:
            connection.request("POST", "/predict", body=CROP, headers=HEADERS)
            sent.release()
            r = connection.getresponse()
            results[i] = (r.status, r.getheader("Retry-After"), r.read())
        except Exception as e:                  # a reset or a closed connection: no answer
            sent.release()
            results[i] = type(e).__name__
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for _ in range(n):                          # every request sent, none answered yet
        assert sent.acquire(timeout=60)
    code, out, err = live["stop"]()
    for t in threads:
        t.join(timeout=60)
    assert [r for r in results.values() if isinstance(r, str)] == [], results
    for answer in results.values():
        check_answer(*answer)
    assert len(results) == n and code == 0, err[-2000:]
    assert "Traceback" not in err and out.splitlines()[-1].startswith("stopped"), out


async def burst(url, clients):
    """`clients` POSTs of the crop at once, each on its own connection: (status, Retry-After,
    body) per request, or the name of the exception that ended it."""
    async def one(session):
        try:
            async with session.post(url, data=CROP, headers=HEADERS) as r:
                return r.status, r.headers.get("Retry-After"), await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return type(e).__name__

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await asyncio.gather(*(one(session) for _ in range(clients)))


@pytest.mark.parametrize("server", list(SERVERS))
def test_300_clients_at_once_each_get_an_http_answer(server, server_process):
    module, flags, _ = SERVERS[server]
    live = server_process(module, *flags, *SMALL_QUEUE[server])
    results = asyncio.run(burst(f"{live['url']}/predict", 300))
    code, _, err = live["stop"]()
    assert [r for r in results if isinstance(r, str)] == []        # no reset, no timeout
    for answer in results:
        check_answer(*answer)
    statuses = Counter(status for status, *_ in results)
    assert statuses[200] > 0 and statuses[503] > 0, statuses       # the queue of 8 overflowed
    assert code == 0 and "Traceback" not in err, err[-2000:]


def exchange(port, data):
    """Send raw bytes on a new connection; everything the server sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_malformed_requests_get_400_and_one_log_line_each(server_process):
    live = server_process("ch15_deploy.batching_server", "--random-weights", "--no-image")
    answers = {name: exchange(live["port"], data) for name, data in hostile.MALFORMED_HTTP.items()}
    good = exchange(live["port"], b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    code, _, err = live["stop"]()
    for name, answer in answers.items():
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), (name, answer[:100])
    assert good.split(b"\r\n")[0].endswith(b" 200 OK")
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == len(hostile.MALFORMED_HTTP), err[-3000:]
    assert all(line.startswith("127.0.0.1 [") and '"-" 400 malformed request (' in line
               and len(line) <= 240 for line in lines), lines
    assert code == 0


def luna_state(edit=None):
    """A seeded LunaModel's checkpoint dict, `edit(state_dict)` applied."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = LunaModel().state_dict()
    if edit:
        edit(state)
    return {"model_state": state, "model_name": "LunaModel", "epoch": 1}


def with_nan(state):
    state["block1.conv1.weight"][0, 0, 0, 0, 0] = float("nan")


@pytest.mark.parametrize("server", list(SERVERS))
def test_a_nan_weights_checkpoint_is_refused_at_startup_in_one_line(server, tmp_path):
    module, flags, flag = SERVERS[server]
    path = tmp_path / "nan.state"
    torch.save(luna_state(with_nan), path)
    done = subprocess.run([sys.executable, "-m", module, flag, str(path), "--port",
                           str(free_port()), "--data-dir", str(tmp_path), *flags[1:]],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.stdout == ""                                    # never said it was serving
    assert_one_error_line(done.returncode, done.stderr, f"{flag} {path}",
                          "'block1.conv1.weight' holds NaN or Inf values")


def edited(key, value):
    def edit(checkpoint):
        checkpoint[key] = value
    return edit


CHECKPOINTS = {   # name: (checkpoint from the seeded one, words in the one line)
    "no model_state": (lambda c: c.pop("model_state"), ["'model_state' is missing"]),
    "model_state a list": (edited("model_state", [1, 2]),
                           ["field 'model_state' is a list, not a dict"]),
    "model_name an int": (edited("model_name", 3), ["field 'model_name' is an int, not a str"]),
    "a weight that is text": (lambda c: c["model_state"].update({"head_linear.bias": "zero"}),
                              ["entry 'head_linear.bias' is a str, not a named tensor"]),
    "an Inf weight": (lambda c: c["model_state"]["head_linear.bias"].fill_(float("inf")),
                      ["entry 'head_linear.bias' holds NaN or Inf"]),
    "weights whose output overflows": (
        lambda c: c["model_state"]["head_linear.weight"].fill_(3e38),
        ["the model's output on the example input is not finite"]),
}


@pytest.mark.parametrize("server", list(SERVERS))
@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_broken_checkpoint_is_one_line_naming_the_file_and_the_field(server, case, tmp_path,
                                                                      capsys, monkeypatch):
    module, flags, flag = SERVERS[server]
    edit, words = CHECKPOINTS[case]
    checkpoint = luna_state()
    edit(checkpoint)
    path = tmp_path / "broken.state"
    torch.save(checkpoint, path)
    monkeypatch.setattr(wsgi_serving, "start_server", lambda *a: pytest.fail("served"))
    monkeypatch.setattr(batching_server, "serve", lambda *a, **k: pytest.fail("served"))
    main = flask_server.main if server == "flask" else batching_server.main
    code, err = run_main(main, [flag, path, "--data-dir", tmp_path, *flags[1:]], capsys)
    assert_one_error_line(code, err, f"{flag} {path}", *words)


def test_nan_generator_weights_are_refused_at_startup(tmp_path, capsys, monkeypatch):
    state = {k: torch.zeros_like(v) for k, v in ResNetGenerator().state_dict().items()}
    state["model.1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "gen.pth"
    torch.save(state, path)
    monkeypatch.setattr(batching_server, "serve", lambda *a, **k: pytest.fail("served"))
    code, err = run_main(batching_server.main, ["--random-weights", "--cyclegan-weights", path,
                                                "--data-dir", tmp_path], capsys)
    assert_one_error_line(code, err, f"--cyclegan-weights {path}",
                          "'model.1.weight' holds NaN or Inf")


class NaNForDenseCrops(nn.Module):
    """A classifier whose answer is NaN for a crop of mean HU above 0, P = 0.5 otherwise."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3, 4))
        logits = torch.zeros(len(x), 2)
        logits[m > 0] = float("nan")
        return logits, logits.softmax(dim=1)


DENSE = torch.full((1, 32, 48, 48), 200.0).numpy().astype("<f4").tobytes()


def test_flask_answers_422_not_nan_for_a_crop_the_model_cannot_score():
    client = flask_server.create_app(NaNForDenseCrops()).test_client()
    bad = client.post("/predict", data=DENSE, headers=HEADERS)
    good = client.post("/predict", data=CROP, headers=HEADERS)
    assert bad.status_code == 422 and strict_json(bad.data) == {"error": NOT_FINITE}
    assert good.status_code == 200 and strict_json(good.data)["prob_nodule"] == 0.5


def test_batching_answers_422_not_nan_and_its_batch_mates_are_answered():
    tiny = ResNetGenerator(ngf=4, n_blocks=1).eval()
    tiny.model[1].weight.data.fill_(float("nan"))     # a broken generator for /image
    app = batching_server.create_app(NaNForDenseCrops(), tiny, image_size=16, max_wait_ms=200)

    async def scenario():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            async def post(path, data, headers=None):
                r = await client.post(path, data=data, headers=headers)
                return r.status, await r.read()
            return await asyncio.gather(post("/predict", DENSE, HEADERS),
                                        post("/predict", CROP, HEADERS),
                                        post("/image", hostile.jpeg_declaring(16, 16)))

    (bad, bad_body), (good, good_body), (image, image_body) = asyncio.run(scenario())
    assert bad == 422 and strict_json(bad_body) == {"error": NOT_FINITE}
    assert good == 200 and strict_json(good_body)["prob_nodule"] == 0.5
    assert image == 500 and "not finite" in strict_json(image_body)["error"]
