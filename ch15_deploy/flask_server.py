"""Chapter 15: serve the LUNA nodule classifier over HTTP with Flask.

    python ch15_deploy/flask_server.py                   # the book's checkpoint on 127.0.0.1:8000
    python ch15_deploy/flask_server.py --random-weights  # a demo without the checkpoint
    python ch15_deploy/cls_client.py                     # in a second shell: send the book's crop

Routes: GET /hello answers "Hello World!" (the book's first server); POST /predict takes one
1 x 32 x 48 x 48 float32 crop in HU, either as the book's multipart form (a `meta` part with
JSON {"shape": [1, 32, 48, 48], "dtype": "float32"} and a `blob` part with the raw little-endian
bytes) or as a raw application/octet-stream body with an `X-Shape: 1,32,48,48` header, and
answers {"prob_malignant": p, "prob_nodule": p}. The book calls the number prob_malignant, but
the chapter 11 classifier it serves tells nodules from non-nodules: p is P(nodule), not a
malignancy grade. Both keys carry the same value, so the book's client keeps working.

Departures from the book, for a server that faces a network: it binds 127.0.0.1 unless told
otherwise (the book used 0.0.0.0); the checkpoint is loaded with weights_only=True and nothing a
client sends is unpickled, only read as float32 bytes; bodies over --max-bytes (1 MiB) are
refused by Flask before they are read; and a bad request (wrong shape or dtype, a byte count
that does not match the shape, NaN or Inf, broken JSON, a missing part) gets a 4xx answer with a
JSON message while the server keeps serving.
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from ch10_luna.model import LunaModel, read_checkpoint
from common.data import add_data_dir_argument, book_file
from common.device import add_device_argument, pick_device
from common.errors import DataError, run_cli

BOOK_CHECKPOINT = "part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"
CROP_SHAPE = (1, 32, 48, 48)       # channel, index, row, column: one crop in HU
DTYPE = "float32"                  # sent little-endian ("<f4"), 4 bytes a voxel: 288 KiB a crop
MAX_BYTES = 1 << 20                # bodies over 1 MiB get 413 before Flask reads them
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_model_arguments(parser):
    """--model PATH / --random-weights, shared with jit_intro.py and export_onnx.py."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", default=None,
                       help="classifier checkpoint in the book's dict format (default: the "
                            f"book's {Path(BOOK_CHECKPOINT).name} under the data root)")
    group.add_argument("--random-weights", action="store_true",
                       help="an untrained LunaModel, for a demo without the checkpoint")
    add_data_dir_argument(parser)


def load_classifier(path=None, data_dir=None, random_weights=False, device="cpu", seed=0):
    """A LunaModel in eval mode: from a book-format checkpoint (strict), or randomly initialized."""
    if random_weights:
        with torch.random.fork_rng(devices=[]):     # seeded, without touching the caller's RNG
            torch.manual_seed(seed)
            return LunaModel().to(device).eval()
    path = Path(path) if path else book_file(BOOK_CHECKPOINT, data_dir, name="luna-models")
    state = read_checkpoint(path, "--model")                # tensors, no code
    if state.get("model_name", "LunaModel") != "LunaModel":
        raise DataError(f"{path}: holds a {state['model_name']!r}, not a LunaModel")
    model = LunaModel()
    try:
        model.load_state_dict(state["model_state"])  # strict: every name and shape must match
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:2])
        raise DataError(f"{path}: does not fit LunaModel: {detail}") from None
    return model.to(device).eval()


def parse_multipart(req):
    """(shape, dtype, blob bytes) from the book's form: a JSON `meta` part and a `blob` part."""
    if "meta" in req.files:
        meta_text = req.files["meta"].read()
    else:
        meta_text = req.form.get("meta")
    if meta_text is not None and "blob" not in req.files and "blob" in req.form:
        # a text field: its bytes were decoded
        raise ValueError("'blob' must be a file part (give it a filename), not a text field")
    return parse_form_parts(meta_text, req.files["blob"].read() if "blob" in req.files else None)


def parse_form_parts(meta_text, blob):
    """(shape, dtype, blob) from the form's two parts, None where a part is missing."""
    if meta_text is None:
        raise ValueError("missing form part 'meta' (JSON with shape and dtype)")
    if blob is None:
        raise ValueError("missing form part 'blob' (the crop's raw float32 bytes)")
    shape, dtype = parse_meta(meta_text)
    return shape, dtype, blob


def parse_meta(meta_text):
    """(shape, dtype) from the `meta` part's JSON (str or bytes); the book sent no dtype."""
    try:
        meta = json.loads(meta_text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or "shape" not in meta:
        raise ValueError('\'meta\' must be a JSON object like {"shape": [1, 32, 48, 48], '
                         '"dtype": "float32"}')
    return meta["shape"], meta.get("dtype", DTYPE)


def parse_raw(req):
    """(shape, dtype, blob bytes) from an octet-stream body with X-Shape (and X-Dtype) headers."""
    shape = parse_shape_header(req.headers.get("X-Shape"))
    return shape, req.headers.get("X-Dtype", DTYPE), req.get_data(cache=False)


def parse_shape_header(header):
    """[1, 32, 48, 48] from an X-Shape header value such as "1,32,48,48"."""
    if not header:
        raise ValueError("missing header X-Shape (e.g. X-Shape: 1,32,48,48)")
    try:
        return [int(s) for s in header.split(",")]
    except ValueError:
        raise ValueError(f"X-Shape {header!r} is not a comma-separated list of integers") \
            from None


def decode_crop(shape, dtype, blob, expected_shape=CROP_SHAPE):
    """Check what a client sent and turn it into a float32 tensor; ValueError says what is wrong."""
    if (not isinstance(shape, list) or not all(type(s) is int for s in shape)
            or tuple(shape) != tuple(expected_shape)):
        raise ValueError(f"shape must be {list(expected_shape)}, got {shape!r}")
    if dtype != DTYPE:
        raise ValueError(f"dtype must be {DTYPE!r}, got {dtype!r}")
    need = math.prod(shape) * 4
    if len(blob) != need:
        raise ValueError(f"blob has {len(blob)} bytes; shape {shape} in {DTYPE} needs {need}")
    array = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(shape)  # own copy
    if not np.isfinite(array).all():
        raise ValueError("crop holds NaN or Inf values")
    return torch.from_numpy(array)


def run_inference(model, crop):
    """P(nodule) for one (1, 32, 48, 48) crop: the softmax's second column, as the book."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        _logits, probs = model(crop.unsqueeze(0).to(device))    # add the batch dimension
    return float(probs[0, 1])


def create_app(model, max_bytes=MAX_BYTES, crop_shape=CROP_SHAPE):
    """The Flask app around an eval-mode classifier; tests drive it with app.test_client()."""
    model.eval()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_bytes    # larger bodies: 413, never read

    @app.errorhandler(HTTPException)
    def http_error(e):                              # 404, 405, 413, ...: JSON instead of HTML
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.get("/hello")
    def hello():
        return "Hello World!"

    @app.post("/predict")
    def predict():
        try:
            if request.mimetype == "multipart/form-data":
                shape, dtype, blob = parse_multipart(request)
            elif request.mimetype == "application/octet-stream":
                shape, dtype, blob = parse_raw(request)
            else:
                return jsonify(error=f"unsupported content type {request.mimetype!r}: send "
                                     "multipart/form-data (meta + blob) or "
                                     "application/octet-stream with X-Shape"), 415
            crop = decode_crop(shape, dtype, blob, crop_shape)
        except ValueError as e:
            return jsonify(error=str(e)), 400
        p = run_inference(model, crop)
        return jsonify(prob_malignant=p, prob_nodule=p)  # the book's (misleading) name, and ours

    return app


def start_server(app, host="127.0.0.1", port=8000):
    """A threaded werkzeug server (not yet serving); port 0 picks a free one (.server_port)."""
    try:
        return make_server(host, port, app, threaded=True)
    except (OSError, SystemExit) as e:      # werkzeug prints why (port in use, ...) and exits
        reason = f" ({e.strerror or e})" if isinstance(e, OSError) else ""
        raise DataError(f"cannot listen on {host}:{port}{reason}; pick another --port or "
                        "--host") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only; 0.0.0.0 "
                        "opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                   help="largest request body accepted (default: %(default)s)")
    add_device_argument(p, default="cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = load_classifier(args.model, args.data_dir, args.random_weights,
                            device=pick_device(args.device))
    server = start_server(create_app(model, max_bytes=args.max_bytes), args.host, args.port)
    what = "an untrained LunaModel" if args.random_weights else "the nodule classifier"
    print(f"serving {what} on http://{args.host}:{server.server_port}/predict "
          f"(and /hello); Ctrl-C stops")
    if args.host not in LOOPBACK:
        print(f"note: bound to {args.host}: reachable from other machines")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    run_cli(main)
