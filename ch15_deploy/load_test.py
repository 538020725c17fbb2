"""Chapter 15: a bounded load generator for the model servers, on this machine only.

    python ch15_deploy/batching_server.py --random-weights &
    python ch15_deploy/load_test.py --concurrency 10 --seconds 5
    python ch15_deploy/load_test.py --url http://127.0.0.1:8000/image --concurrency 4 --requests 8

N clients (aiohttp, one connection each) send requests back to back until --requests have been
sent or --seconds have passed, whichever comes first; then it prints requests/s, the p50/p95/p99
latency of the answered (200) requests and the failures by kind (HTTP status or exception).
A /predict URL gets a lung-like HU crop (classifier.hu_like_crop, sent as the book's
multipart form by wire.encode_crop, or raw with --raw); an /image URL gets a synthetic
320 x 240 JPEG, or --image.
It refuses any host but 127.0.0.1, localhost or ::1: this is for measuring your own server,
not for loading someone else's.
"""
import argparse
import asyncio
import io
import math
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from PIL import Image

from ch15_deploy.classifier import hu_like_crop
from ch15_deploy.flags import at_least
from ch15_deploy.wire import LOOPBACK, encode_crop, quoted
from common.errors import DataError, run_cli

DEFAULT_URL = "http://127.0.0.1:8000/predict"


def check_loopback(url):
    """The URL, if it names this machine; DataError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK:
        raise DataError(f"--url {quoted(url)}: load_test.py only targets http://127.0.0.1, "
                        "localhost or [::1] (a server on this machine)")
    return url


def synthetic_jpeg(width=320, height=240, seed=0):
    """A smooth colour gradient with noise, as JPEG bytes: something for /image to chew on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 128.0)], axis=-1)
    rgb = (rgb + rng.normal(0, 20, rgb.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def read_image_file(path):
    """The bytes of --image; DataError when it is not a readable file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--image {path}: {'a folder' if path.is_dir() else 'no such file'}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"--image {path}: cannot read ({e.strerror or e})") from None


def make_payload(url, raw=False, image_path=None, seed=0):
    """(body bytes, headers) for one request to `url`, chosen by its path."""
    if urlsplit(url).path.rstrip("/").endswith("/image"):
        body = read_image_file(image_path) if image_path else synthetic_jpeg(seed=seed)
        return body, {"Content-Type": "image/jpeg"}
    return encode_crop(hu_like_crop(seed), raw=raw)                # the client's own encoding


async def run_load(url, body, headers, concurrency=10, requests=None, seconds=None,
                   timeout_s=30.0):
    """Send until `requests` are sent or `seconds` are up; latencies of 200s and failures."""
    check_loopback(url)
    if requests is None and seconds is None:
        raise ValueError("give a number of requests or of seconds")
    latencies, errors = [], Counter()
    sent = 0
    start = time.perf_counter()
    stop_at = start + seconds if seconds is not None else math.inf

    async def client(session):
        nonlocal sent
        while time.perf_counter() < stop_at and (requests is None or sent < requests):
            sent += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[f"HTTP {response.status}"] += 1
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                errors[type(e).__name__] += 1
                await asyncio.sleep(0.01)      # no hot loop against a server that is down

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "elapsed": time.perf_counter() - start,
            "concurrency": concurrency}


def summarize(result):
    """requests/s (all answered), ok/s and latency percentiles in ms from run_load's result."""
    ok, errors, elapsed = len(result["latencies"]), result["errors"], result["elapsed"]
    total = ok + sum(errors.values())
    ms = np.array(result["latencies"]) * 1000
    pct = {f"p{q}": float(np.percentile(ms, q)) if ok else math.nan for q in (50, 95, 99)}
    return {"requests": total, "ok": ok, "seconds": elapsed, "rps": total / elapsed,
            "ok_rps": ok / elapsed, **pct, "errors": dict(errors),
            "concurrency": result["concurrency"]}


def format_summary(s):
    errors = ", ".join(f"{k} x{v}" for k, v in sorted(s["errors"].items())) or "none"
    return (f"{s['requests']} requests in {s['seconds']:.2f} s from {s['concurrency']} clients: "
            f"{s['rps']:.1f} requests/s ({s['ok']} answered 200, {s['ok_rps']:.1f}/s); "
            f"latency p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms, p99 {s['p99']:.1f} ms; "
            f"errors: {errors}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help="(default: %(default)s)")
    p.add_argument("--concurrency", type=at_least(int, 1), default=10,
                   help="clients (default: %(default)s)")
    p.add_argument("--requests", type=at_least(int, 1), default=None,
                   help="stop after this many requests (default: 200 unless --seconds)")
    p.add_argument("--seconds", type=at_least(float, 0.001), default=None,
                   help="stop after this long")
    p.add_argument("--timeout", type=at_least(float, 0.001), default=30.0,
                   help="per request, in seconds")
    p.add_argument("--raw", action="store_true", help="/predict: raw bytes with X-Shape")
    p.add_argument("--image", default=None, help="/image: a JPEG or PNG file to send")
    args = p.parse_args(argv)
    if args.requests is None and args.seconds is None:
        args.requests = 200
    check_loopback(args.url)
    body, headers = make_payload(args.url, args.raw, args.image)
    result = asyncio.run(run_load(args.url, body, headers, args.concurrency, args.requests,
                                  args.seconds, args.timeout))
    summary = summarize(result)
    print(format_summary(summary))
    if summary["ok"] == 0 and "ClientConnectorError" in summary["errors"]:
        print(f"nobody answered at {args.url}: start the server first "
              "(python ch15_deploy/batching_server.py --random-weights)")
    return summary


if __name__ == "__main__":
    run_cli(main)
