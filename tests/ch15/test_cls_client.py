"""The client: its hand-built multipart form, and real round trips over loopback."""
import json
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ch15_deploy import cls_client
from ch15_deploy.classifier import hu_like_crop, load_example
from ch15_deploy.cls_client import send_crop
from ch15_deploy.flask_server import create_app
from ch15_deploy.wire import encode_multipart
from common.errors import DataError


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
    with socket.socket() as s:                           # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="cannot reach .* start the server"):
        send_crop(hu_like_crop(0), f"http://127.0.0.1:{port}/predict", timeout=5)


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
