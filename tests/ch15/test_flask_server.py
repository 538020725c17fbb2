"""The Flask classifier server: /hello, /predict in both encodings, and every bad request."""
import io
import json
import math

import numpy as np
import pytest
import torch

from ch15_deploy import flask_server
from ch15_deploy.classifier import BOOK_CHECKPOINT, hu_like_crop, load_classifier
from ch15_deploy.flask_server import create_app, run_inference
from ch15_deploy.wire import CROP_SHAPE, MAX_BYTES
from ch15_deploy.wsgi_serving import start_server
from common.errors import DataError
from tests.ch15 import hostile

CROP_BYTES = math.prod(CROP_SHAPE) * 4


def multipart(meta, blob):
    """The book's form, encoded by Flask's test client (independent of cls_client's encoder)."""
    meta = meta if isinstance(meta, (bytes, str)) else json.dumps(meta)
    meta = meta.encode() if isinstance(meta, str) else meta
    return {"data": {"meta": (io.BytesIO(meta), "meta.json"), "blob": (io.BytesIO(blob), "b")},
            "content_type": "multipart/form-data"}


def raw(blob, shape="1,32,48,48", **headers):
    return {"data": blob, "content_type": "application/octet-stream",
            "headers": {"X-Shape": shape, **headers}}


def as_bytes(crop):
    return crop.numpy().astype("<f4").tobytes()


def expected_prob(model, crop):
    with torch.inference_mode():
        return float(model(crop.unsqueeze(0))[1][0, 1])


def test_hello(app_client):
    r = app_client.get("/hello")
    assert r.status_code == 200 and r.get_data(as_text=True) == "Hello World!"


def test_predict_multipart_matches_the_model(app_client, hu_model, crop):
    r = app_client.post("/predict", **multipart({"shape": list(CROP_SHAPE), "dtype": "float32"},
                                                as_bytes(crop)))
    assert r.status_code == 200, r.get_json()
    p = r.get_json()["prob_malignant"]
    assert 0.0 <= p <= 1.0
    assert r.get_json()["prob_nodule"] == p
    assert p == pytest.approx(expected_prob(hu_model, crop), abs=1e-7)
    assert 0.001 < p < 0.999                  # the fixture's model is not saturated


def test_predict_without_dtype_like_the_book_client(app_client, hu_model, crop):
    r = app_client.post("/predict", **multipart({"shape": list(CROP_SHAPE)}, as_bytes(crop)))
    assert r.status_code == 200
    assert r.get_json()["prob_malignant"] == pytest.approx(expected_prob(hu_model, crop), abs=1e-7)


def test_predict_raw_bytes(app_client, hu_model, crop):
    r = app_client.post("/predict", **raw(as_bytes(crop), **{"X-Dtype": "float32"}))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["prob_nodule"] == pytest.approx(expected_prob(hu_model, crop), abs=1e-7)


def test_different_crops_get_different_answers(app_client):
    probs = {app_client.post("/predict", **raw(as_bytes(hu_like_crop(s)))).get_json()
             ["prob_nodule"] for s in range(3)}
    assert len(probs) == 3


GOOD = bytes(CROP_BYTES)                                      # zeros: a valid crop
NAN = np.full(math.prod(CROP_SHAPE), np.nan, "<f4").tobytes()
INF = np.concatenate([np.zeros(math.prod(CROP_SHAPE) - 1, "<f4"), [np.inf]]).astype("<f4")
SHAPE = list(CROP_SHAPE)

BAD_REQUESTS = {
    "too large raw": ("post", "/predict", raw(bytes(MAX_BYTES + 1)), 413, "Too Large"),
    "too large form": ("post", "/predict", multipart({"shape": SHAPE}, bytes(MAX_BYTES + 1)),
                       413, "Too Large"),
    "wrong shape": ("post", "/predict", multipart({"shape": [1, 32, 48, 47]}, GOOD[:-4 * 48]),
                    400, "shape must be"),
    "shape not a list": ("post", "/predict", multipart({"shape": "1,32,48,48"}, GOOD), 400,
                         "shape must be"),
    "float shape": ("post", "/predict", multipart({"shape": [1.0, 32, 48, 48]}, GOOD), 400,
                    "shape must be"),
    "wrong dtype": ("post", "/predict", multipart({"shape": SHAPE, "dtype": "float64"},
                                                  bytes(2 * CROP_BYTES)), 400, "dtype"),
    "too few bytes": ("post", "/predict", multipart({"shape": SHAPE}, GOOD[:-4]), 400,
                      "294908 bytes"),
    "too many bytes": ("post", "/predict", raw(GOOD + bytes(4)), 400, "needs 294912"),
    "nan": ("post", "/predict", multipart({"shape": SHAPE}, NAN), 400, "NaN or Inf"),
    "inf": ("post", "/predict", raw(INF.tobytes()), 400, "NaN or Inf"),
    "invalid json": ("post", "/predict", multipart(b'{"shape": [1, 32', GOOD), 400,
                     "not valid JSON"),
    "meta not utf-8": ("post", "/predict", multipart(b"\xff\xfe", GOOD), 400, "not valid JSON"),
    "meta not an object": ("post", "/predict", multipart([1, 32, 48, 48], GOOD), 400,
                           "JSON object"),
    "missing blob": ("post", "/predict", {"data": {"meta": (io.BytesIO(b'{"shape": []}'), "m")},
                                          "content_type": "multipart/form-data"},
                     400, "missing form part 'blob'"),
    "missing meta": ("post", "/predict", {"data": {"blob": (io.BytesIO(GOOD), "b")},
                                          "content_type": "multipart/form-data"},
                     400, "missing form part 'meta'"),
    "blob as text field": ("post", "/predict",
                           {"data": {"meta": json.dumps({"shape": SHAPE}), "blob": "abc"},
                            "content_type": "multipart/form-data"}, 400, "file part"),
    "raw without X-Shape": ("post", "/predict", {"data": GOOD,
                                                 "content_type": "application/octet-stream"},
                            400, "X-Shape"),
    "bad X-Shape": ("post", "/predict", raw(GOOD, shape="1,32,x,48"), 400, "X-Shape"),
    "wrong X-Dtype": ("post", "/predict", raw(GOOD, **{"X-Dtype": "uint8"}), 400, "dtype"),
    "json body": ("post", "/predict", {"json": {"shape": SHAPE}}, 415, "content type"),
    "unknown route": ("get", "/nope", {}, 404, "Not Found"),
    "get on predict": ("get", "/predict", {}, 405, "Method Not Allowed"),
}


def send(client, case):
    """Send one of BAD_REQUESTS (fresh copies of its file parts) and return the response."""
    method, route, kwargs, *_ = BAD_REQUESTS[case]
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("data"), dict):
        kwargs["data"] = {k: (io.BytesIO(v[0].getvalue()), v[1]) if isinstance(v, tuple) else v
                          for k, v in kwargs["data"].items()}
    return getattr(client, method)(route, **kwargs)


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_request_gets_4xx_with_a_json_message(app_client, case):
    *_, status, message = BAD_REQUESTS[case]
    r = send(app_client, case)
    assert r.status_code == status
    assert message in r.get_json()["error"]


def test_server_keeps_serving_after_every_bad_request(app_client, hu_model, crop):
    statuses = [send(app_client, case).status_code for case in BAD_REQUESTS]
    assert all(400 <= s < 500 for s in statuses)
    good = app_client.post("/predict", **raw(as_bytes(crop)))
    assert good.status_code == 200
    assert good.get_json()["prob_nodule"] == pytest.approx(expected_prob(hu_model, crop),
                                                           abs=1e-7)


def test_size_cap_is_configurable(hu_model, crop):
    client = create_app(hu_model, max_bytes=CROP_BYTES - 1).test_client()
    assert client.post("/predict", **raw(as_bytes(crop))).status_code == 413
    client = create_app(hu_model, max_bytes=CROP_BYTES).test_client()
    assert client.post("/predict", **raw(as_bytes(crop))).status_code == 200


def test_random_weights_model_is_seeded_and_in_eval_mode():
    a, b = load_classifier(random_weights=True), load_classifier(random_weights=True)
    assert not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values()))
    state = torch.random.get_rng_state()
    load_classifier(random_weights=True)
    assert torch.equal(state, torch.random.get_rng_state())   # the caller's RNG is untouched


def test_checkpoint_round_trip(tmp_path, hu_model, crop):
    path = tmp_path / "cls.state"
    torch.save({"model_state": hu_model.state_dict(), "model_name": "LunaModel"}, path)
    model = load_classifier(path)
    assert not model.training
    assert run_inference(model, crop) == pytest.approx(expected_prob(hu_model, crop), abs=1e-7)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not a checkpoint", "not a readable"),
    ({"weights": {}}, "model_state"),
    ({"model_state": {}, "model_name": "UNetWrapper"}, "UNetWrapper"),
    ({"model_state": {"head_linear.weight": torch.zeros(2, 1152)}}, "does not fit"),
    ({"model_state": {}, "code": __import__("os").getcwd}, "not a readable"),
])
def test_bad_checkpoints_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "model.state"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)                             # the last one pickles a function
    with pytest.raises(DataError, match=message):
        load_classifier(path)


def test_missing_book_checkpoint_names_the_download(tmp_path):
    with pytest.raises(DataError, match="download luna-models"):
        load_classifier(None, data_dir=tmp_path)
    with pytest.raises(DataError, match="download luna-models"):
        flask_server.main(["--data-dir", str(tmp_path)])


def test_busy_port_is_a_one_line_error(serve, hu_model):
    url = serve(create_app(hu_model))
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(DataError, match="cannot listen"):
        start_server(create_app(hu_model), "127.0.0.1", port)


@pytest.mark.parametrize("module", ["flask_server", "cls_client", "jit_intro", "export_onnx"])
def test_help(module, capsys):
    main = __import__(f"ch15_deploy.{module}", fromlist=["main"]).main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "Chapter 15" in capsys.readouterr().out


@pytest.mark.realdata
def test_book_checkpoint_classifies_the_book_crop(book_model, book_example):
    (crop, label, _uid, _center), _ = book_example
    client = create_app(book_model).test_client()
    r = client.post("/predict", **multipart({"shape": SHAPE, "dtype": "float32"},
                                            as_bytes(crop)))
    assert r.status_code == 200
    p_nodule = r.get_json()["prob_nodule"]
    p_true_class = p_nodule if int(label[1]) == 1 else 1 - p_nodule
    assert p_true_class > 0.5


@pytest.mark.realdata
def test_book_checkpoint_loads_by_default(book_file):
    data_dir = book_file(BOOK_CHECKPOINT).parents[2]
    model = load_classifier(None, data_dir=data_dir)
    assert sum(p.numel() for p in model.parameters()) == 222_220


@pytest.mark.parametrize("case", list(hostile.PREDICT))
def test_hostile_bodies_get_a_4xx_json_answer_and_the_server_goes_on(app_client, hu_model,
                                                                     crop, case):
    body, content_type = hostile.PREDICT[case]
    r = app_client.post("/predict", data=body, content_type=content_type)
    assert r.status_code < 500 and r.is_json, (r.status_code, r.data[:200])
    answer = r.get_json()
    assert ("prob_nodule" in answer if r.status_code == 200
            else 400 <= r.status_code and len(answer["error"]) < 300), answer
    good = app_client.post("/predict", **raw(as_bytes(crop)))
    assert good.status_code == 200
    assert good.get_json()["prob_nodule"] == pytest.approx(expected_prob(hu_model, crop),
                                                           abs=1e-7)


def test_deep_json_is_refused_by_its_depth(app_client):
    r = app_client.post("/predict", data=hostile.PREDICT["json nested 2000 deep in 4000 bytes"][0],
                        content_type=hostile.FORM)
    assert r.status_code == 400 and "nested 2000 deep; at most 4" in r.get_json()["error"]
    r = app_client.post("/predict", data=hostile.PREDICT["json nested 100000 deep"][0],
                        content_type=hostile.FORM)
    assert r.status_code == 400 and "200000 bytes; at most 4096" in r.get_json()["error"]


@pytest.mark.slow          # AOTInductor compilations with freezing, one per batch size
def test_compile_serves_the_eager_answers_from_kept_programs(tmp_path):
    from ch15_deploy.served_models import load_cls_model

    eager, _ = load_cls_model(flask_server.classify, random_weights=True, data_dir=tmp_path)
    served, _ = load_cls_model(flask_server.classify, random_weights=True, data_dir=tmp_path,
                               compiled=True)
    crops = torch.stack([hu_like_crop(seed) for seed in range(3)])
    with torch.inference_mode():                  # untrained: logits in the hundreds
        logits, _ = served(crops)
        expected, _ = eager(crops)
    assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()
    kept = sorted(p.name.split("-")[2] for p in (tmp_path / "cache" / "programs").iterdir())
    assert kept == ["1x1x32x48x48", "3x1x32x48x48"]   # the start-up try's and this batch's


def test_a_lone_crop_gets_the_answer_it_would_get_alone():
    """prob_nodule runs a single crop as a batch of two (a faster oneDNN path): same answer."""
    from ch15_deploy.classifier import prob_nodule

    model = load_classifier(random_weights=True)
    crop = hu_like_crop(1).unsqueeze(0)
    with torch.inference_mode():
        alone = model(crop)[1][:, 1]
    torch.testing.assert_close(prob_nodule(model, crop), alone, rtol=0, atol=1e-6)
