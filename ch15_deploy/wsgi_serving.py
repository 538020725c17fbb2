"""Chapter 15: the Flask app served by waitress, a production WSGI server, from the script.

waitress reads and writes the sockets in one loop and runs the app in a pool of threads. Around
the app: at most --threads requests run it at once and at most --max-queue wait for a turn; one
more is answered 503 with Retry-After at once, so under any load every connection gets an HTTP
answer. waitress reads a whole body before the app sees it, so the app's body limit is
waitress's too: a declared length over it, or a chunked body once more of it has arrived, is
answered 413 there and the connection closed; waitress's own answers are the API's JSON errors.
SIGTERM or Ctrl-C stops it gracefully: what was read is answered (a request that reaches the
app after the signal gets 503 with Retry-After), then the connections are closed and the script
exits with status 0.
"""
import contextlib
import json
import logging
import select
import signal
import threading
import time

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask
from waitress.utilities import RequestEntityTooLarge

from ch15_deploy.http_errors import RETRY_AFTER_S
from common.errors import DataError

THREADS = 4                 # requests running the app at once (waitress's own default)
MAX_QUEUE = 64              # requests waiting for one of those threads before 503
SPARE_THREADS = 4           # answer the 503s while every other thread runs or waits
DRAIN_S = 30.0              # the longest a graceful stop waits for requests in flight
POLL_S = 0.1                # how often the loop looks at the stop flag
MOST_CONNECTIONS = 1000     # open connections; more wait in the listen backlog
CHUNK_SLACK = 1 << 16       # bytes of chunk framing and trailers waitress may count on top


class JsonErrorTask(ErrorTask):
    """waitress's own answer to a request it refuses before the app (a body over the limit,
    HTTP it cannot parse), as the app answers errors: JSON {"error": "<reason>: <detail>"}.
    The connection is closed after it."""

    def execute(self):
        error = self.request.error
        body = json.dumps({"error": f"{error.reason}: {error.body}"}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def body_limit_channel(max_body):
    """waitress's connection class answering with JsonErrorTask and, with `max_body`, refusing
    a body from its declared length, or a chunked one as soon as more than max_body bytes of it
    (its chunk framing not counted) have arrived: waitress reads no further."""
    class BodyLimitParser(HTTPRequestParser):
        def received(self, data):
            consumed = super().received(data)
            if max_body is not None and (
                    isinstance(self.error, RequestEntityTooLarge) or self.error is None and (
                        self.content_length > max_body
                        or self.body_rcv is not None and len(self.body_rcv) > max_body)):
                self.error = RequestEntityTooLarge(f"Maximum request body size {max_body} "
                                                   "exceeded.")
                self.completed = True
                self.expect_continue = False            # no "100 Continue" for a refused body
            return consumed

    return type("BodyLimitChannel", (HTTPChannel,), {"error_task_class": JsonErrorTask,
                                                     "parser_class": BodyLimitParser})


def refuse(start_response, message):
    """A 503 JSON answer with Retry-After, written without the app."""
    body = json.dumps({"error": message}).encode()
    start_response("503 Service Unavailable", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
        ("Retry-After", str(RETRY_AFTER_S))])
    return [body]


def gate_app(app, threads, max_queue):
    """(WSGI app, its gate): at most `threads` requests in `app` at once, `max_queue` waiting;
    more, or any once gate["closing"] is set, are refused with 503."""
    gate = {"turns": threading.BoundedSemaphore(threads), "lock": threading.Lock(),
            "waiting": 0, "running": 0, "closing": False}

    def gated(environ, start_response):
        with gate["lock"]:
            if gate["closing"]:
                return refuse(start_response, "shutting down")
            if gate["waiting"] >= max_queue:
                return refuse(start_response, f"too busy: {max_queue} requests already "
                                              "waiting; retry later")
            gate["waiting"] += 1
        with gate["turns"]:
            with gate["lock"]:
                gate["waiting"] -= 1
                gate["running"] += 1
            try:
                return app(environ, start_response)
            finally:
                with gate["lock"]:
                    gate["running"] -= 1
    return gated, gate


def connection_limit(most=MOST_CONNECTIONS):
    """Open connections to allow: `most`, fewer where the file-descriptor limit is lower."""
    try:
        import resource
    except ImportError:                             # Windows: no such limit to read
        return most
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return most if soft == resource.RLIM_INFINITY else max(64, min(most, soft - 64))


def start_server(app, host="127.0.0.1", port=8000, threads=THREADS, max_queue=MAX_QUEUE,
                 max_body=None):
    """The app behind waitress, listening but not serving yet: a dict with the server, the gate,
    `port` (the one picked for port 0) and the `stop` event. A busy port is a DataError.
    `max_body`: the largest request body in bytes (default: a Flask app's MAX_CONTENT_LENGTH),
    refused by waitress while it reads (body_limit_channel)."""
    if max_body is None:
        max_body = getattr(app, "config", {}).get("MAX_CONTENT_LENGTH")
    gated, gate = gate_app(app, threads, max_queue)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # a warning per queued request
    # waitress's own count includes chunk framing (up to 5 bytes per byte in 1-byte chunks):
    # above the limit, so that the limit itself is body_limit_channel's
    raw_limit = {} if max_body is None else {"max_request_body_size": 6 * max_body + CHUNK_SLACK}
    try:
        server = create_server(gated, host=host, port=port,
                               threads=threads + max_queue + SPARE_THREADS,
                               connection_limit=connection_limit(), backlog=1024,
                               asyncore_use_poll=True, ident="", **raw_limit)
    except OSError as e:
        raise DataError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another "
                        "--port or --host") from None
    channel = body_limit_channel(max_body)
    for listener in {server, *socket_map(server).values()}:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel
    listening = getattr(server, "effective_listen", None) or [(host, server.effective_port)]
    return {"server": server, "gate": gate, "port": int(listening[0][1]),
            "stop": threading.Event()}


def socket_map(server):
    return server.map if hasattr(server, "map") else server._map   # several sockets, or one


def drained(sockets, gate):
    """Nothing left to answer: no request in the app or waiting, none read or half read, no
    answer still to send, and no connection or bytes waiting to be read."""
    with gate["lock"]:
        if gate["running"] or gate["waiting"]:
            return False
    for channel in sockets.values():
        if getattr(channel, "requests", None) or getattr(channel, "request", None) is not None \
                or getattr(channel, "total_outbufs_len", 0):
            return False
    return not readable(list(sockets))


def readable(fds):
    """Whether any of the file descriptors has something to read, without waiting."""
    if not hasattr(select, "poll"):                 # Windows: select() takes sockets only
        return bool(select.select(fds, [], [], 0)[0])
    poller = select.poll()                          # select() stops at descriptor 1024
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def serve_until_stopped(served, drain_s=DRAIN_S):
    """Serve until served["stop"] is set; then refuse new requests with 503, answer those in
    flight (for at most drain_s), close everything. Returns True when all were answered."""
    server, gate, stop = served["server"], served["gate"], served["stop"]
    sockets = socket_map(server)
    while not stop.is_set():
        wasyncore.loop(timeout=POLL_S, map=sockets, use_poll=True, count=1)
    with gate["lock"]:
        gate["closing"] = True
    deadline = time.monotonic() + drain_s
    while not (done := drained(sockets, gate)) and time.monotonic() < deadline:
        wasyncore.loop(timeout=POLL_S / 10, map=sockets, use_poll=True, count=1)
    wasyncore.close_all(sockets)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
    return done


@contextlib.contextmanager
def stop_on_signals(served, signals=(signal.SIGINT, signal.SIGTERM)):
    """SIGTERM and Ctrl-C set served["stop"] (a graceful stop) while the block runs."""
    previous = {s: signal.signal(s, lambda *_: served["stop"].set()) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
