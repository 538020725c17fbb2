"""Bodies over the servers' limit while they arrive (issue 24): a declared 2 GB body of which
1 KB is sent, and a chunked body one byte past the limit, each answered 413 with the API's JSON
error and the connection closed, by the Flask app under waitress (as flask_server.py serves it)
and by the batching server; a body of exactly the limit is still served.

The client is a plain socket whose every wait is bounded by a 2 s timeout: a server that waits
for the rest of the body fails the test by timing out, and nothing else here measures time.
"""
import asyncio
import json
import socket
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestServer

from ch15_deploy import batching_server, flask_server
from ch15_deploy.classifier import hu_like_crop

CROP = hu_like_crop(4).numpy().astype("<f4").tobytes()
LIMIT = len(CROP)                     # a limit the crop just fits: 32 * 48 * 48 * 4 bytes
HEAD = ("POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        "X-Shape: 1,32,48,48\r\n")
TOO_LARGE = "Request Entity Too Large: Maximum request body size 294912 exceeded."


def chunked(body, end=True):
    """`body` in chunked transfer encoding (64 KiB chunks), with its last chunk when `end`."""
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + (b"0\r\n\r\n" if end else b"")


UPLOADS = {   # name: (head, body sent), the body as the client sends it
    "declared 2 GB, 1 KB sent": (HEAD + "Content-Length: 2000000000\r\n\r\n", bytes(1024)),
    "chunked, one byte past": (HEAD + "Transfer-Encoding: chunked\r\n\r\n",
                               chunked(bytes(LIMIT + 1), end=False)),
}
AT_THE_LIMIT = {
    "declared": (HEAD + f"Content-Length: {LIMIT}\r\n\r\n", CROP),
    "chunked": (HEAD + "Transfer-Encoding: chunked\r\n\r\n", chunked(CROP)),
}


def upload(port, head, body, ends=True, timeout_s=2.0):
    """(status, JSON answer, whether the server then ended the connection: None unless `ends`)
    for `head` and as much of `body` as the server reads before it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        try:
            s.sendall(head.encode() + body)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # it stopped reading and closed: its answer is waiting
        answer = b""
        while not answer_complete(answer):
            chunk = s.recv(65536)
            assert chunk, f"the connection ended before the answer: {answer[:200]!r}"
            answer += chunk
        closed = None
        if ends:
            try:
                closed = s.recv(65536) == b""
            except ConnectionResetError:    # its end of the connection, after the answer
                closed = True
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), json.loads(payload), closed


def answer_complete(answer):
    """Whether `answer` holds a whole HTTP response with a Content-Length body."""
    head_part, found, payload = answer.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head_part.split(b"\r\n")[1:]
               if line.lower().startswith(b"content-length:")]
    return bool(found and lengths) and len(payload) >= int(lengths[0])


@pytest.fixture
def flask_port(serve, hu_model):
    """The Flask app with a LIMIT-byte cap behind waitress (conftest's serve: start_server takes
    the app's own limit, as flask_server.py passes --max-bytes)."""
    return urlsplit(serve(flask_server.create_app(hu_model, max_bytes=LIMIT))).port


def on_batching_server(hu_model, exchanges):
    """[upload(port, head, body, ends) for each exchange] against the batching app (LIMIT
    bytes) on a real 127.0.0.1 socket, the blocking client in a thread beside the server's
    loop."""
    async def go():
        app = batching_server.create_app(hu_model, max_bytes=LIMIT)
        async with TestServer(app, host="127.0.0.1") as server:
            loop = asyncio.get_running_loop()
            return [await loop.run_in_executor(None, upload, server.port, head, body, ends)
                    for head, body, ends in exchanges]
    return asyncio.run(go())


@pytest.mark.parametrize("name", list(UPLOADS))
def test_flask_under_waitress_refuses_a_body_past_the_limit_at_once(flask_port, name):
    assert upload(flask_port, *UPLOADS[name]) == (413, {"error": TOO_LARGE}, True)
    status, answer, _ = upload(flask_port, *AT_THE_LIMIT["declared"], ends=False)   # goes on
    assert status == 200 and 0 <= answer["prob_nodule"] <= 1


@pytest.mark.parametrize("name", list(AT_THE_LIMIT))
def test_flask_under_waitress_serves_a_body_of_exactly_the_limit(flask_port, name):
    status, answer, _ = upload(flask_port, *AT_THE_LIMIT[name], ends=False)
    assert status == 200 and 0 <= answer["prob_nodule"] <= 1


def test_the_batching_server_refuses_a_body_past_the_limit_at_once(hu_model):
    results = on_batching_server(hu_model, [(*UPLOADS[name], True) for name in UPLOADS]
                                 + [(*AT_THE_LIMIT[name], False) for name in AT_THE_LIMIT])
    assert results[:2] == [(413, {"error": TOO_LARGE}, True)] * 2
    for status, answer, _ in results[2:]:                  # exactly the limit: served
        assert status == 200 and 0 <= answer["prob_nodule"] <= 1
