"""The loopback load generator: bounded runs against an in-process batching server."""
import asyncio
import socket
import threading

import pytest
import torch
from aiohttp import web

from ch01_intro.cyclegan import ResNetGenerator
from ch15_deploy import batching_server as bs
from ch15_deploy import load_test
from common.errors import DataError
from tests.ch15.test_batching_server import MeanClassifier


@pytest.fixture
def live_server():
    """live_server(app) -> base URL of the app served on 127.0.0.1 from its own thread."""
    running = []

    def start(app):
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        running.append((loop, runner, thread))
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for loop, runner, thread in running:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


@pytest.mark.parametrize("url", ["http://example.com/predict", "http://10.0.0.1:8000/predict",
                                 "http://0.0.0.0:8000/predict", "ftp://127.0.0.1/predict"])
def test_refuses_anything_but_this_machine(url):
    with pytest.raises(DataError, match="only targets"):
        load_test.main(["--url", url, "--requests", "1"])


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/predict", "http://localhost/image",
                                 "http://[::1]:8000/predict"])
def test_accepts_loopback_urls(url):
    assert load_test.check_loopback(url) == url


def test_fixed_number_of_requests(live_server):
    url = live_server(bs.create_app(MeanClassifier(), max_wait_ms=5)) + "/predict"
    summary = load_test.main(["--url", url, "--concurrency", "4", "--requests", "12"])
    assert summary["requests"] == summary["ok"] == 12 and summary["errors"] == {}
    assert 0 < summary["p50"] <= summary["p95"] <= summary["p99"]
    assert summary["rps"] == pytest.approx(12 / summary["seconds"])
    raw = load_test.main(["--url", url, "--concurrency", "2", "--requests", "3", "--raw"])
    assert raw["ok"] == 3


def test_a_time_bound_run_stops_by_itself(live_server):
    url = live_server(bs.create_app(MeanClassifier(), max_wait_ms=5)) + "/predict"
    summaries = []
    run = threading.Thread(target=lambda: summaries.append(load_test.main(
        ["--url", url, "--concurrency", "3", "--seconds", "0.5"])), daemon=True)
    run.start()
    run.join(timeout=120)                     # a bound on a hang, not a measure of speed
    assert not run.is_alive(), "the run did not stop by itself"
    (summary,) = summaries
    assert summary["seconds"] >= 0.5 and summary["ok"] > 0 and summary["errors"] == {}


def test_image_route_gets_jpegs(live_server):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = ResNetGenerator(ngf=4, n_blocks=1).eval()
    url = live_server(bs.create_app(image_model=generator, image_size=32)) + "/image"
    summary = load_test.main(["--url", url, "--concurrency", "2", "--requests", "4"])
    assert summary["ok"] == 4


def test_errors_are_counted_by_kind(live_server):
    with socket.socket() as s:                 # a port held, never listening: refused, and no
        s.bind(("127.0.0.1", 0))              # other process can take it meanwhile
        port = s.getsockname()[1]
        down = load_test.main(["--url", f"http://127.0.0.1:{port}/predict", "--requests", "3",
                               "--concurrency", "1"])
    assert down["ok"] == 0 and down["errors"] == {"ClientConnectorError": 3}
    url = live_server(bs.create_app(MeanClassifier())) + "/nowhere"
    missing = load_test.main(["--url", url, "--requests", "2", "--concurrency", "2"])
    assert missing["errors"] == {"HTTP 404": 2}


def test_summarize_percentiles_on_known_latencies():
    result = {"latencies": [i / 1000 for i in range(1, 101)], "elapsed": 2.0,
              "errors": {"HTTP 503": 5, "TimeoutError": 1}, "concurrency": 3}
    s = load_test.summarize(result)
    assert s["requests"] == 106 and s["ok"] == 100 and s["rps"] == 53.0
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert "HTTP 503 x5" in load_test.format_summary(s)


def test_payloads_match_the_route():
    body, headers = load_test.make_payload("http://127.0.0.1/image")
    assert body[:2] == b"\xff\xd8" and headers["Content-Type"] == "image/jpeg"
    body, headers = load_test.make_payload("http://127.0.0.1/predict", raw=True)
    assert len(body) == 32 * 48 * 48 * 4 and headers["X-Shape"] == "1,32,48,48"
