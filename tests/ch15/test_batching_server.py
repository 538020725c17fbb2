"""The aiohttp request-batching server: batching, 503/504, bad input, shutdown, images, --jit.

pytest-aiohttp is not installed: each test runs its coroutine with asyncio.run and drives the
app through aiohttp.test_utils.TestServer / TestClient on 127.0.0.1.
"""
import asyncio
import gc
import io
import json
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from torch import nn

from ch01_intro.cyclegan import ResNetGenerator
from ch15_deploy import batching_server as bs
from ch15_deploy import request_bodies, served_models
from ch15_deploy.classifier import hu_like_crop
from ch15_deploy.images import decode_image, encode_jpeg, image_header
from ch15_deploy.load_test import run_load, summarize
from ch15_deploy.wire import CROP_SHAPE, encode_crop
from common.errors import DataError
from tests.ch15 import hostile

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated:DeprecationWarning")

CROP_HEADERS = {"Content-Type": "application/octet-stream", "X-Shape": "1,32,48,48"}


class Counting(nn.Module):
    """Wraps a model: counts forward calls, records batch sizes; with a `gate` (a
    threading.Event) each forward first waits until the test opens it, so that requests pile up
    behind a busy model however fast or slow the machine is."""

    def __init__(self, model, gate=None):
        super().__init__()
        self.model, self.gate, self.batch_sizes = model, gate, []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        if self.gate is not None:                   # runs in the executor thread
            assert self.gate.wait(timeout=120), "the test never opened the gate"
        return self.model(x)


async def until(condition, what, timeout_s=120):
    """Wait (in the event loop) until condition() holds; a bound on a hang, not on speed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


class MeanClassifier(nn.Module):
    """A fast stand-in classifier: logits from the crop's mean HU, as LunaModel's pair."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3, 4)) / 500
        logits = torch.stack([-m, m], dim=1)
        return logits, logits.softmax(dim=1)


def as_bytes(crop):
    return crop.numpy().astype("<f4").tobytes()


def form(crop):
    """The book's multipart form, as cls_client.py builds it: (body, headers)."""
    return encode_crop(crop)


def jpeg(width=40, height=30, fmt="JPEG", seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_prob(model, crop):
    with torch.inference_mode():
        return float(model(crop.unsqueeze(0))[1][0, 1])


def run_with_client(app, scenario):
    """asyncio.run(scenario(client)) with a TestClient around a TestServer on 127.0.0.1."""
    async def go():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await scenario(client)
    return asyncio.run(go())


async def post_crop(client, crop, path="/predict"):
    r = await client.post(path, data=as_bytes(crop), headers=CROP_HEADERS)
    return r.status, await r.json()


@pytest.fixture(scope="module")
def tiny_generator():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ResNetGenerator(ngf=4, n_blocks=1).eval()


def test_concurrent_requests_share_forward_calls_and_answer_as_unbatched(hu_model):
    model = Counting(hu_model)
    crops = [hu_like_crop(seed) for seed in range(5)]
    # a batch of 5 runs as soon as the fifth arrives; the minute is only a bound on a stall
    app = bs.create_app(model, max_batch_size=5, max_wait_ms=60_000)

    async def scenario(client):
        async def post_form(crop):                          # one in the book's form
            body, headers = form(crop)
            r = await client.post("/predict", data=body, headers=headers)
            return r.status, await r.json()

        answers = await asyncio.gather(post_form(crops[0]),
                                       *(post_crop(client, c) for c in crops[1:]))
        stats = await (await client.get("/stats")).json()
        return answers, stats

    answers, stats = run_with_client(app, scenario)
    assert [status for status, _ in answers] == [200] * 5
    assert model.batch_sizes == [5]                         # one forward for all five
    for crop, (_, body) in zip(crops, answers, strict=True):
        assert body["prob_nodule"] == body["prob_malignant"]
        assert body["prob_nodule"] == pytest.approx(expected_prob(hu_model, crop), abs=1e-6)
    assert stats["predict"]["requests"] == 5
    assert stats["predict"]["batches"] == len(model.batch_sizes)


def test_batch_size_one_runs_one_forward_per_request(hu_model):
    model = Counting(MeanClassifier())
    app = bs.create_app(model, max_batch_size=1, max_wait_ms=300)

    async def scenario(client):
        return await asyncio.gather(*(post_crop(client, hu_like_crop(s)) for s in range(4)))

    assert [s for s, _ in run_with_client(app, scenario)] == [200] * 4
    assert model.batch_sizes == [1, 1, 1, 1]


def test_a_full_queue_answers_503_with_retry_after():
    model = Counting(MeanClassifier(), gate=threading.Event())     # busy until a 503 is out
    app = bs.create_app(model, max_batch_size=1, max_queue=2, max_wait_ms=0)
    crop = hu_like_crop(0)

    async def scenario(client):
        async def one():
            r = await client.post("/predict", data=as_bytes(crop), headers=CROP_HEADERS)
            if r.status == 503:
                model.gate.set()
            return r.status, r.headers.get("Retry-After"), await r.json()
        return await asyncio.gather(*(one() for _ in range(8)))

    results = run_with_client(app, scenario)
    statuses = [s for s, _, _ in results]
    assert set(statuses) == {200, 503}
    for status, retry_after, body in results:
        if status == 503:
            assert retry_after == "1" and "busy" in body["error"]
    assert len(model.batch_sizes) == statuses.count(200)


def test_a_slow_answer_gets_504_and_the_server_goes_on():
    model = Counting(MeanClassifier(), gate=threading.Event())     # no answer until opened
    app = bs.create_app(model, timeout_s=0.2, max_wait_ms=0)

    async def scenario(client):
        late = await post_crop(client, hu_like_crop(0))
        client.server.app[bs.SETTINGS]["timeout_s"] = 120.0
        model.gate.set()                                  # the slow batch finishes now
        return late, await post_crop(client, hu_like_crop(1))

    (status, body), (status2, body2) = run_with_client(app, scenario)
    assert status == 504 and "no answer within 0.2 s" in body["error"]
    assert status2 == 200 and 0 <= body2["prob_nodule"] <= 1


def good_crop_bytes():
    return as_bytes(hu_like_crop(0))


def nan_crop():
    crop = hu_like_crop(0)
    crop[0, 3, 4, 5] = float("nan")
    return as_bytes(crop)


def inf_crop():
    crop = hu_like_crop(0)
    crop[0, 0, 0, 0] = float("inf")
    return as_bytes(crop)


def meta_form(meta_bytes, blob=None):
    """A hand-made form with a `meta` part and, unless None, a `blob` part."""
    boundary = "b0undary"
    body = b""
    parts = [("meta", meta_bytes)] + ([("blob", blob)] if blob is not None else [])
    for name, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                 f"filename=\"{name}\"\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


BAD_REQUESTS = {      # name: (method, path, body, headers, status, words in the error message)
    "too large": ("POST", "/predict", b"\0" * (bs.MAX_BYTES + 4), CROP_HEADERS, 413, "exceeded"),
    "wrong shape": ("POST", "/predict", good_crop_bytes(),
                    {**CROP_HEADERS, "X-Shape": "1,48,32,48"}, 400, "shape must be"),
    "wrong dtype": ("POST", "/predict", good_crop_bytes(),
                    {**CROP_HEADERS, "X-Dtype": "float64"}, 400, "dtype must be"),
    "short blob": ("POST", "/predict", good_crop_bytes()[:-4], CROP_HEADERS, 400, "bytes"),
    "nan": ("POST", "/predict", nan_crop(), CROP_HEADERS, 400, "NaN or Inf"),
    "inf": ("POST", "/predict", inf_crop(), CROP_HEADERS, 400, "NaN or Inf"),
    "bad x-shape": ("POST", "/predict", good_crop_bytes(),
                    {**CROP_HEADERS, "X-Shape": "1,a"}, 400, "X-Shape"),
    "no x-shape": ("POST", "/predict", good_crop_bytes(),
                   {"Content-Type": "application/octet-stream"}, 400, "missing header X-Shape"),
    "invalid json": ("POST", "/predict", *meta_form(b"{shape: [1,", good_crop_bytes()), 400,
                     "not valid JSON"),
    "meta not a dict": ("POST", "/predict", *meta_form(b"[1, 32]", good_crop_bytes()), 400,
                        "must be a JSON object"),
    "missing blob": ("POST", "/predict", *meta_form(b'{"shape": [1, 32, 48, 48]}'), 400,
                     "missing form part 'blob'"),
    "broken multipart": ("POST", "/predict", b"garbage without boundaries",
                         {"Content-Type": "multipart/form-data; boundary=xyz"}, 400,
                         "malformed multipart"),
    "text/plain": ("POST", "/predict", b"1,2,3", {"Content-Type": "text/plain"}, 415,
                   "unsupported content type"),
    "not an image": ("POST", "/image", b"GIF89a but not really", {}, 400, "not a JPEG or PNG"),
    "gif": ("POST", "/image", None, {}, 400, "not a JPEG or PNG"),
    "truncated jpeg": ("POST", "/image", jpeg(64, 48)[:-800], {}, 400, "cannot decode"),
    "too many pixels": ("POST", "/image", jpeg(200, 150), {}, 413, "pixels accepted"),
    "image too large": ("PUT", "/image", b"\xff" * 70_000, {}, 413, "exceeded"),
    "unknown route": ("POST", "/nowhere", b"", {}, 404, "Not Found"),
    "wrong method": ("GET", "/predict", None, {}, 405, "Not Allowed"),
}


def gif_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_goes_on(name, tiny_generator):
    method, path, body, headers, status, words = BAD_REQUESTS[name]
    if name == "gif":
        body = gif_bytes()
    model = Counting(MeanClassifier())
    app = bs.create_app(model, tiny_generator, image_size=16, max_pixels=10_000,
                        max_image_bytes=65_536)

    async def scenario(client):
        r = await client.request(method, path, data=body, headers=headers)
        answer = (r.status, await r.json())
        return answer, await post_crop(client, hu_like_crop(1))

    (got, message), (after, body_after) = run_with_client(app, scenario)
    assert got == status and words in message["error"], message
    assert after == 200 and 0 <= body_after["prob_nodule"] <= 1
    assert model.batch_sizes == [1]                     # no bad input reached the model


@pytest.mark.parametrize("case", list(hostile.PREDICT))
def test_hostile_form_bodies_get_a_4xx_json_answer_and_the_server_goes_on(case):
    body, content_type = hostile.PREDICT[case]
    model = Counting(MeanClassifier())

    async def scenario(client):
        r = await client.post("/predict", data=body, headers={"Content-Type": content_type})
        answer = (r.status, r.content_type, await r.json())
        return answer, await post_crop(client, hu_like_crop(1))

    (status, content_type, message), (after, _) = run_with_client(bs.create_app(model), scenario)
    assert status < 500 and content_type == "application/json", (status, message)
    if status == 200:                               # an ignorable oddity in a part header
        assert model.batch_sizes == [1, 1] and "prob_nodule" in message
    else:
        assert 400 <= status and len(message["error"]) < 300
        assert model.batch_sizes == [1]             # only the good crop reached the model
    assert after == 200


@pytest.mark.parametrize("case", list(hostile.IMAGES))
def test_hostile_images_are_refused_from_their_header_and_the_server_goes_on(case,
                                                                            tiny_generator):
    body, status, words = hostile.IMAGES[case]
    model = Counting(tiny_generator)
    app = bs.create_app(image_model=model, image_size=16)

    async def scenario(client):
        r = await client.post("/image", data=body)
        answer = (r.status, await r.json())
        good = await client.post("/image", data=jpeg(40, 30))
        return answer, good.status

    (got, message), after = run_with_client(app, scenario)
    assert got == status and words in message["error"], message
    assert after == 200 and model.batch_sizes == [1]       # only the good image reached it


def test_the_header_reader_finds_the_size_of_real_files():
    assert image_header(jpeg(40, 30)) == ("JPEG", 40, 30)
    assert image_header(jpeg(33, 17, "PNG")) == ("PNG", 33, 17)
    progressive = io.BytesIO()
    Image.new("RGB", (50, 20)).save(progressive, format="JPEG", progressive=True)
    assert image_header(progressive.getvalue()) == ("JPEG", 50, 20)


async def send_partial_and_close(port, n_bytes, total):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  f"application/octet-stream\r\nX-Shape: 1,32,48,48\r\n"
                  f"Content-Length: {total}\r\n\r\n").encode() + b"\0" * n_bytes)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_clients_that_disconnect_mid_request_do_not_stop_the_server():
    model = Counting(MeanClassifier(), gate=threading.Event())
    app = bs.create_app(model, max_wait_ms=0)
    size = len(good_crop_bytes())

    async def scenario(client):
        port = client.server.port
        await send_partial_and_close(port, size // 2, size)      # body cut in the middle
        await send_partial_and_close(port, size, size)           # gone before the answer
        await until(lambda: model.batch_sizes, "the second one reaches the model")
        model.gate.set()                          # its answer now goes to a closed connection
        return await post_crop(client, hu_like_crop(2))

    status, body = run_with_client(app, scenario)
    assert status == 200 and 0 <= body["prob_nodule"] <= 1


def test_shutdown_answers_every_queued_request():
    model = Counting(MeanClassifier(), gate=threading.Event())
    app = bs.create_app(model, max_batch_size=2, max_wait_ms=0, max_queue=16)

    async def scenario():
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        url = server.make_url("/predict")
        async with aiohttp.ClientSession() as session:
            async def one(seed):
                async with session.post(url, data=as_bytes(hu_like_crop(seed)),
                                        headers=CROP_HEADERS) as r:
                    return r.status, await r.json()
            tasks = [asyncio.create_task(one(s)) for s in range(6)]
            batcher = app[bs.BATCHERS]["predict"]
            await until(lambda: batcher["queue"].qsize() == 6 - sum(model.batch_sizes),
                        "all six in: the first batch held at the model, the rest queued")
            closing = asyncio.create_task(server.close())     # stop while requests wait
            await until(lambda: batcher["closing"], "the server is stopping")
            model.gate.set()
            await closing
            return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert [status for status, _ in results] == [200] * 6
    assert sum(model.batch_sizes) == 6 and max(model.batch_sizes) <= 2


def test_image_route_answers_a_jpeg_of_the_fixed_size(tiny_generator):
    model = Counting(tiny_generator)
    app = bs.create_app(image_model=model, image_size=32, max_batch_size=3, max_wait_ms=60_000)
    images = [jpeg(64, 48, seed=1), jpeg(20, 30, "PNG", seed=2), jpeg(33, 33, seed=3)]

    async def scenario(client):
        async def one(data, method):
            r = await client.request(method, "/image", data=data)
            return r.status, r.content_type, await r.read()
        return await asyncio.gather(*(one(d, m) for d, m in zip(images, ("POST", "PUT", "POST"),
                                                                strict=True)))

    results = run_with_client(app, scenario)
    for status, content_type, data in results:
        assert status == 200 and content_type == "image/jpeg"
        out = Image.open(io.BytesIO(data))
        assert out.format == "JPEG" and out.size == (32, 32) and out.mode == "RGB"
    assert model.batch_sizes == [3]
    # the generator's picture of the resized input (JPEG-encoded the same way; a batched
    # forward may round a pixel differently from a single one)
    x = decode_image(images[0], 32)
    with torch.inference_mode():
        expected = encode_jpeg(tiny_generator(x.unsqueeze(0))[0])
    got, expected = (np.asarray(Image.open(io.BytesIO(b))).astype(int)
                     for b in (results[0][2], expected))
    assert np.abs(got - expected).mean() < 1


def test_decode_image_resizes_to_a_square_in_0_1():
    x = decode_image(jpeg(90, 60), 24)
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_jit_serving_with_a_traced_luna_model(hu_model, tmp_path):
    path = tmp_path / "luna_traced.pt"
    with torch.no_grad():
        traced = torch.jit.trace(hu_model, torch.zeros(1, *CROP_SHAPE))
    traced.save(str(path))
    cls_model, batch_size = served_models.load_cls_model(bs.classify_batch, jit=str(path),
                                                         max_batch_size=4)
    assert isinstance(cls_model, torch.jit.ScriptModule) and batch_size == 4
    app = bs.create_app(Counting(cls_model), max_batch_size=batch_size, max_wait_ms=300)
    crops = [hu_like_crop(s) for s in range(2)]

    async def scenario(client):
        return await asyncio.gather(*(post_crop(client, c) for c in crops))

    for crop, (status, body) in zip(crops, run_with_client(app, scenario), strict=True):
        assert status == 200
        assert body["prob_nodule"] == pytest.approx(expected_prob(hu_model, crop), abs=1e-6)


class FailsOnce(nn.Module):
    """MeanClassifier whose first batch of more than one sample raises (a passing failure)."""

    def __init__(self):
        super().__init__()
        self.model, self.batch_sizes, self.failed = MeanClassifier(), [], False

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] > 1 and not self.failed:
            self.failed = True
            raise RuntimeError("pretend the device ran out of memory")
        return self.model(x)


def test_one_failed_batch_is_answered_one_by_one_and_batching_goes_on(capsys):
    model = FailsOnce()
    app = bs.create_app(model, max_batch_size=3, max_wait_ms=60_000)     # batches of 3 at once
    first, second = ([hu_like_crop(s) for s in range(i, i + 3)] for i in (0, 3))

    async def scenario(client):
        answers = await asyncio.gather(*(post_crop(client, c) for c in first))
        answers += await asyncio.gather(*(post_crop(client, c) for c in second))
        return answers, await (await client.get("/stats")).json()

    answers, stats = run_with_client(app, scenario)
    for crop, (status, body) in zip(first + second, answers, strict=True):
        assert status == 200
        assert body["prob_nodule"] == pytest.approx(expected_prob(MeanClassifier(), crop))
    # the failed batch of 3 went one by one; the next 3 were one batch again
    assert model.batch_sizes == [3, 1, 1, 1, 3]
    assert stats["predict"]["failed_batches"] == 1 and stats["predict"]["max_batch_size"] == 3
    assert "answered one by one" in capsys.readouterr().err


def test_an_exported_model_with_a_fixed_batch_is_served_one_at_a_time(tmp_path, capsys):
    path = tmp_path / "mean.pt2"
    torch.export.save(torch.export.export(MeanClassifier(), (torch.zeros(1, *CROP_SHAPE),)),
                      str(path))
    notes = []
    program, batch_size = served_models.load_cls_model(bs.classify_batch, exported=str(path),
                                                       max_batch_size=4, announce=notes.append)
    assert batch_size == 1 and "runs one sample but not two" in notes[0]
    model = Counting(program)
    app = bs.create_app(model, max_batch_size=4, max_wait_ms=300,
                        batch_limits={"predict": batch_size})
    crops = [hu_like_crop(s) for s in range(3)]

    async def scenario(client):
        return await asyncio.gather(*(post_crop(client, c) for c in crops))

    for crop, (status, body) in zip(crops, run_with_client(app, scenario), strict=True):
        assert status == 200
        assert body["prob_nodule"] == pytest.approx(expected_prob(MeanClassifier(), crop))
    assert model.batch_sizes == [1, 1, 1]                 # never a batch it cannot run


def test_a_dynamic_batch_program_is_served_in_batches(tmp_path):
    path = tmp_path / "mean.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(MeanClassifier(), (torch.zeros(2, *CROP_SHAPE),),
                                          dynamic_shapes=({0: batch},)), str(path))
    _, batch_size = served_models.load_cls_model(bs.classify_batch, exported=str(path),
                                                 max_batch_size=8)
    assert batch_size == 8


def test_unreadable_model_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="--jit .*bad.pt: not a TorchScript file"):
        served_models.load_cls_model(bs.classify_batch, jit=str(bad))
    with pytest.raises(DataError, match="--exported .*missing.pt2: no such file"):
        served_models.load_cls_model(bs.classify_batch, exported=str(tmp_path / "missing.pt2"))


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status")


def test_200_clients_through_load_test_get_only_200_and_503():
    app = bs.create_app(MeanClassifier(), max_batch_size=16, max_wait_ms=5, max_queue=32)
    body, headers = as_bytes(hu_like_crop(0)), CROP_HEADERS

    async def scenario(client):
        url = str(client.make_url("/predict"))
        return [summarize(await run_load(url, body, headers, concurrency=200, requests=400))
                for _ in range(2)]

    for r in run_with_client(app, scenario):
        assert r["requests"] == 400 and r["ok"] > 0
        assert set(r["errors"]) <= {"HTTP 503"}, r["errors"]


def run_bursts(app, body, n_bursts=4, clients=200, gate=None):
    """n bursts of `clients` simultaneous POSTs; per burst the (status, Retry-After) pairs, and
    Python's heap (tracemalloc) and the RSS after each, then one more request and /stats.
    `gate`: the model's (Counting), closed at each burst's start and opened by its first 503."""
    async def burst(session, url):
        async def one():
            async with session.post(url, data=body, headers=CROP_HEADERS) as r:
                await r.read()
                if r.status == 503 and gate is not None:
                    gate.set()
                return r.status, r.headers.get("Retry-After")
        if gate is not None:
            gate.clear()
        return await asyncio.gather(*(one() for _ in range(clients)))

    async def scenario(client):
        url, bursts, heap, rss = client.make_url("/predict"), [], [], []
        connector = aiohttp.TCPConnector(limit=0)           # 200 connections at once
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(n_bursts):
                bursts.append(await burst(session, url))
                gc.collect()
                heap.append(tracemalloc.get_traced_memory()[0])
                rss.append(rss_bytes())
        after = await post_crop(client, hu_like_crop(1))
        return bursts, heap, rss, after, await (await client.get("/stats")).json()

    tracemalloc.start()
    try:
        return run_with_client(app, scenario)
    finally:
        tracemalloc.stop()


def memory_after_bursts(keep_bodies):
    """Run in a fresh interpreter (see below): the bursts against a queue of 8, keeping every
    body the server reads when `keep_bodies` (the leak the budget must catch); prints the heap
    and RSS after each burst as JSON."""
    if keep_bodies:
        real_read_body, kept = request_bodies.read_body, []

        async def keeping_read_body(request, max_bytes):
            kept.append(await real_read_body(request, max_bytes))
            return kept[-1]
        request_bodies.read_body = keeping_read_body
    _, heap, rss, *_ = run_bursts(
        bs.create_app(MeanClassifier(), max_batch_size=8, max_wait_ms=5, max_queue=8),
        as_bytes(hu_like_crop(0)))
    print(json.dumps({"heap": heap, "rss": rss}))


def memory_in_fresh_process(keep_bodies):
    """memory_after_bursts in a new interpreter: the RSS of a process that has run the rest of
    the suite is shaped by what earlier tests freed (glibc reuses it), so a leak's growth there
    is partly hidden; a fresh process starts from the same state every time."""
    done = subprocess.run(
        [sys.executable, "-c", "from tests.ch15.test_batching_server import memory_after_bursts"
         f" as m; m({keep_bodies})"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_200_client_burst_overflows_with_503s_leaks_nothing_and_the_server_goes_on():
    """Four bursts of 200 simultaneous clients against a queue of 8: each request gets 200 or
    503 + Retry-After, only the 200s reach the model, a request afterwards is answered, and
    memory from the second burst to the last grows by far less than keeping the bodies costs.

    The yardstick is measured, not assumed: the same bursts against a server that keeps every
    body it reads must exceed the budget several times over. The budget is a tenth of what
    keeping two bursts' bodies takes for Python's heap (tracemalloc), a quarter for the RSS
    (glibc keeps freed pages for reuse; the first burst also raises its mmap threshold to the
    288 KiB bodies, so it is left out). Memory is measured in fresh interpreters, the server
    and the leaking one alike."""
    model = Counting(MeanClassifier(), gate=threading.Event())   # busy until a 503 is out
    body = as_bytes(hu_like_crop(0))
    bursts, _, _, (status, answer), stats = run_bursts(
        bs.create_app(model, max_batch_size=8, max_wait_ms=5, max_queue=8), body,
        gate=model.gate)
    answered = 0
    for results in bursts:
        statuses = Counter(s for s, _ in results)
        assert set(statuses) == {200, 503}, statuses         # the queue overflowed, nothing else
        assert all(retry == "1" for s, retry in results if s == 503)
        answered += statuses[200]
    assert status == 200 and 0 <= answer["prob_nodule"] <= 1
    assert sum(model.batch_sizes) == answered + 1 == stats["predict"]["requests"]
    assert stats["predict"]["queued"] == 0

    kept_bodies = 2 * 200 * len(body)                        # bursts 2..4: two bursts' bodies
    heap_budget, rss_budget = kept_bodies / 10, kept_bodies / 4
    server, leaking = memory_in_fresh_process(False), memory_in_fresh_process(True)
    heap, rss = server["heap"], server["rss"]
    assert heap[-1] - heap[1] < heap_budget, f"heap grew {(heap[-1] - heap[1]) / 2**20:.1f} MiB"
    assert rss[-1] - rss[1] < rss_budget, f"RSS grew {(rss[-1] - rss[1]) / 2**20:.1f} MiB"
    heap, rss = leaking["heap"], leaking["rss"]
    assert heap[-1] - heap[1] > 5 * heap_budget
    assert rss[-1] - rss[1] > 2 * rss_budget
