"""Chapter 15: what request batching buys, measured on this machine.

    python ch15_deploy/benchmark.py
    python ch15_deploy/benchmark.py --device cuda --seconds 10

Starts batching_server.py twice as a separate process on 127.0.0.1 (an untrained LunaModel on
/predict; the weights do not change the speed): batched (--max-batch-size 16, --max-wait-ms 10)
and unbatched (--max-batch-size 1). Against each, load_test.py's client runs 1, 10 and 50
concurrent clients for --seconds, after a short warm-up, and the table shows requests/s and the
p99 latency, the ratio batched / unbatched, and the mean batch the server ran (from /stats).
The queue is large enough (256) that no request is refused. Client and server share this
machine's cores, so the numbers depend on what else runs on it.
"""
import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request

from ch15_deploy.flags import at_least
from ch15_deploy.load_test import make_payload, run_load, summarize
from common.data import REPO_ROOT
from common.device import pick_device
from common.errors import DataError, one_line, run_cli

CLIENTS = (1, 10, 50)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_stats(base_url):
    with urllib.request.urlopen(f"{base_url}/stats", timeout=5) as r:
        return json.loads(r.read())["predict"]


def start_server(max_batch_size, max_wait_ms, device, startup_s=120):
    """A batching_server.py process on a free loopback port, once it answers /stats."""
    port = free_port()
    cmd = [sys.executable, "-m", "ch15_deploy.batching_server", "--random-weights",
           "--no-image", "--port", str(port), "--max-batch-size", str(max_batch_size),
           "--max-wait-ms", str(max_wait_ms), "--max-queue", "256", "--device", device]
    process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = process.stderr.read().strip().splitlines()[-1:] or ["(nothing)"]
            raise DataError(f"the server exited: {one_line(said[0], 200)}")
        try:
            get_stats(base_url)
            return process, base_url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise DataError(f"the server did not answer within {startup_s} s")


def stop_server(process):
    process.terminate()                        # SIGTERM: aiohttp shuts down gracefully
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(base_url, clients, seconds, body, headers):
    """One load point: load_test's summary plus the mean batch size the server ran."""
    url = f"{base_url}/predict"
    asyncio.run(run_load(url, body, headers, concurrency=clients, requests=2 * clients))  # warm
    before = get_stats(base_url)
    summary = summarize(asyncio.run(run_load(url, body, headers, concurrency=clients,
                                             seconds=seconds)))
    after = get_stats(base_url)
    batches = after["batches"] - before["batches"]
    summary["mean_batch"] = (after["requests"] - before["requests"]) / max(batches, 1)
    return summary


def client_counts(text):
    """argparse type: "1,10,50" -> [1, 10, 50], each at least 1."""
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of client "
                                         "counts") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every client count must be >= 1")
    return counts


def format_table(rows):
    lines = [f"{'clients':>7} | {'batched req/s':>13} {'p99 ms':>8} {'batch':>5} | "
             f"{'unbatched req/s':>15} {'p99 ms':>8} | {'speed-up':>8}",
             "-" * 80]
    for r in rows:
        b, u = r["batched"], r["unbatched"]
        lines.append(f"{r['clients']:>7} | {b['ok_rps']:>13.1f} {b['p99']:>8.0f} "
                     f"{b['mean_batch']:>5.1f} | {u['ok_rps']:>15.1f} {u['p99']:>8.0f} | "
                     f"{r['speedup']:>7.2f}x")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=at_least(float, 0.1), default=5.0, help="per load point")
    p.add_argument("--clients", type=client_counts, default=list(CLIENTS),
                   help="comma-separated client counts (default: 1,10,50)")
    p.add_argument("--max-batch-size", type=at_least(int, 2), default=16,
                   help="for the batched server")
    p.add_argument("--max-wait-ms", type=at_least(float, 0), default=10.0,
                   help="for the batched server")
    p.add_argument("--device", default="cpu", help="the servers' --device (default: cpu)")
    args = p.parse_args(argv)
    pick_device(args.device)                    # an absent device: one line, before any server
    clients = args.clients
    body, headers = make_payload("http://127.0.0.1/predict", raw=True)
    results = {}
    for name, batch in (("batched", args.max_batch_size), ("unbatched", 1)):
        process, base_url = start_server(batch, args.max_wait_ms, args.device)
        try:
            for n in clients:
                results[name, n] = s = measure(base_url, n, args.seconds, body, headers)
                print(f"{name:9s} {n:3d} clients: {s['ok_rps']:7.1f} requests/s, p50 "
                      f"{s['p50']:6.0f} ms, p99 {s['p99']:6.0f} ms, mean batch "
                      f"{s['mean_batch']:.1f}, errors {s['errors'] or 'none'}", flush=True)
        finally:
            stop_server(process)
    rows = [{"clients": n, "batched": results["batched", n],
             "unbatched": results["unbatched", n],
             "speedup": results["batched", n]["ok_rps"] / results["unbatched", n]["ok_rps"]}
            for n in clients]
    print()
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    run_cli(main)
