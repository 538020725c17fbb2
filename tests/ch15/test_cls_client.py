"""The client: its hand-built multipart form, and real round trips over loopback."""
import argparse
import json
import re
import socket
import struct
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ch15_deploy import cls_client
from ch15_deploy.classifier import hu_like_crop, load_example
from ch15_deploy.cls_client import send_crop
from ch15_deploy.flask_server import create_app
from ch15_deploy.wire import encode_multipart
from common.errors import DataError, run_cli


def forward_prob(model, crop):
    with torch.inference_mode():
        return float(model(crop.unsqueeze(0))[1][0, 1])


def test_hand_built_multipart_parses_in_werkzeug(app_client, hu_model, crop):
    request = cls_client.crop_request(crop, "http://127.0.0.1/predict")
    r = app_client.post("/predict", data=request.data,
                        content_type=request.get_header("Content-type"))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["prob_malignant"] == pytest.approx(forward_prob(hu_model, crop), abs=1e-7)


def test_multipart_boundary_never_occurs_in_a_part():
    body, content_type = encode_multipart([("a", "a.bin", "application/octet-stream",
                                            b"x" * 100)])
    boundary = content_type.split("boundary=")[1].encode()
    assert body.count(boundary) == 2                      # the opening and closing delimiters
    assert body.endswith(b"--" + boundary + b"--\r\n")


def test_hu_like_crop_looks_like_ct():
    crop = hu_like_crop(0)
    assert crop.shape == (1, 32, 48, 48) and crop.dtype == torch.float32
    assert crop.min() >= -1000 and crop.max() <= 1000
    assert crop[0, 16, 24, 24] > crop[0, 2, 2, 2] + 300       # the dense ball in the middle
    assert torch.equal(hu_like_crop(0), crop) and not torch.equal(hu_like_crop(1), crop)


@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw"])
def test_loopback_round_trip(serve, hu_model, crop, raw):
    url = serve(create_app(hu_model))
    with urllib.request.urlopen(f"{url}/hello", timeout=10) as r:
        assert r.read() == b"Hello World!"
    answer = send_crop(crop, f"{url}/predict", raw=raw, timeout=30)
    assert answer["prob_nodule"] == answer["prob_malignant"]
    assert answer["prob_nodule"] == pytest.approx(forward_prob(hu_model, crop), abs=1e-7)


def test_concurrent_requests_get_their_own_answers(serve, hu_model):
    url = serve(create_app(hu_model))
    crops = [hu_like_crop(20 + i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:                   # the server handles them in threads
        answers = list(pool.map(lambda c: send_crop(c, f"{url}/predict"), crops))
    for answer, crop in zip(answers, crops):
        assert answer["prob_nodule"] == pytest.approx(forward_prob(hu_model, crop), abs=1e-6)


def test_server_error_message_reaches_the_client(serve, hu_model):
    url = serve(create_app(hu_model))
    with pytest.raises(DataError, match="server answered 400: shape must be"):
        send_crop(torch.zeros(1, 16, 48, 48), f"{url}/predict")
    with pytest.raises(DataError, match="server answered 404"):
        send_crop(torch.zeros(1, 32, 48, 48), f"{url}/nope")


def test_unreachable_server_is_a_one_line_error():
    with socket.socket() as s:        # a port held, never listening: refused, and no other
        s.bind(("127.0.0.1", 0))     # process can take it meanwhile
        port = s.getsockname()[1]
        with pytest.raises(DataError, match="cannot reach .* start the server"):
            send_crop(hu_like_crop(0), f"http://127.0.0.1:{port}/predict", timeout=60)


def test_missing_example_names_the_download(tmp_path):
    with pytest.raises(DataError, match="download cls-val-example"):
        load_example(tmp_path)
    with pytest.raises(DataError, match="download cls-val-example"):
        cls_client.main(["--data-dir", str(tmp_path)])


@pytest.mark.realdata
def test_book_example_loads(book_example):
    (crop, label, series_uid, center), _ = book_example
    assert crop.shape == (1, 32, 48, 48) and crop.dtype == torch.float32
    assert label.tolist() in ([0, 1], [1, 0])
    assert isinstance(series_uid, str) and series_uid.startswith("1.3.6.1.4.1.14519")
    assert center.shape == (3,)


@pytest.mark.realdata
@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw"])
def test_client_main_against_the_book_model(serve, book_model, book_example, capsys, raw):
    (crop, label, *_), data_dir = book_example
    url = serve(create_app(book_model))
    argv = ["--url", f"{url}/predict", "--data-dir", str(data_dir)] + (["--raw"] if raw else [])
    result = cls_client.main(argv)
    assert result["label"] == label.tolist()
    assert result["predicted"] == cls_client.describe_label(label)    # the book model is right
    assert result["answer"]["prob_nodule"] == pytest.approx(forward_prob(book_model, crop),
                                                            abs=1e-7)
    out = capsys.readouterr().out
    assert "label: not a nodule (one-hot [1, 0])" in out or "label: a nodule" in out
    assert json.dumps(result["answer"]) in out


def fake_server(reply):
    """A one-thread TCP server on 127.0.0.1 that answers every connection with reply(conn)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    conn.recv(1 << 20)                   # the request's start
                    reply(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}/predict"


def http_reply(status, content_type, body):
    def reply(conn):
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    return reply


def reset(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST


def silence(conn):
    while conn.recv(65536):             # read it all, answer nothing: until the client gives
        pass                            # up and hangs up


BAD_SERVERS = {   # name: (reply, words in the one-line error)
    "HTML page with 200": (http_reply("200 OK", "text/html", b"<html><body>hi</body></html>"),
                           "answered an HTML page, not JSON"),
    "HTML error page": (http_reply("502 Bad Gateway", "text/html", b"<html>oops</html>"),
                        "server answered 502: Bad Gateway (an HTML page, no JSON message)"),
    "JSON error that is a list": (http_reply("500 Oops", "application/json", b"[1, 2]"),
                                  "server answered 500: Oops (application/json"),
    "JSON without the field": (http_reply("200 OK", "application/json", b'{"p": 0.5}'),
                               "no probability in [0, 1] under prob_nodule or prob_malignant"),
    "probability out of range": (http_reply("200 OK", "application/json",
                                            b'{"prob_nodule": 7}'), "no probability in [0, 1]"),
    "probability as text": (http_reply("200 OK", "application/json",
                                       b'{"prob_malignant": "high"}'), "no probability"),
    "JSON array": (http_reply("200 OK", "application/json", b"[0.5]"), "not an object"),
    "deeply nested JSON": (http_reply("200 OK", "application/json", b"[" * 100_000),
                           "not JSON"),
    "connection reset": (reset, "the connection broke before a whole answer came"),
    "closed without a word": (lambda conn: None, "the connection broke"),
    "garbled status line": (lambda conn: conn.sendall(b"NOT HTTP\r\n\r\n"),
                            "the connection broke"),
    "body cut short": (lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
                                                 b'{"prob'), "the connection broke"),
    "no answer in time": (silence, "no answer within 1 s"),
}


@pytest.mark.parametrize("case", list(BAD_SERVERS))
def test_a_bad_server_answer_is_one_line(case):
    reply, words = BAD_SERVERS[case]
    server, url = fake_server(reply)
    timeout = 1 if reply is silence else 60     # the others answer; a slow machine is no case
    try:
        with pytest.raises(DataError) as e:
            send_crop(hu_like_crop(0), url, timeout=timeout)
    finally:
        server.close()
    message = str(e.value)
    assert words in message and url in message, message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize("argv, words", [
    (["--url", "ftp://127.0.0.1/predict"], "--url 'ftp://127.0.0.1/predict': not an http://"),
    (["--url", "not a url"], "not an http:// URL"),
    (["--timeout", "0"], "--timeout 0.0: must be > 0"),
])
def test_bad_flags_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(cls_client.main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err          # argparse: its usage line(s), then the one error line
    assert words in err.splitlines()[-1] and "Traceback" not in err


def test_a_broken_example_file_is_refused(tmp_path):
    path = tmp_path / "p3ch15" / "cls_val_example.pt"
    path.parent.mkdir()
    for content, words in [(b"not a torch file", "not a readable torch file"),
                           ((torch.zeros(1, 32, 48, 48), torch.tensor([1, 0])),
                            "not the book's (crop"),
                           ((torch.full((1, 32, 48, 48), float("nan")), torch.tensor([1, 0]),
                             "1.2.3", torch.zeros(3)), "NaN or Inf"),
                           ({"x": argparse.Namespace()}, "holds Python objects")]:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(DataError, match=re.escape(words)):
            load_example(tmp_path)
