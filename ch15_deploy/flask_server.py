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
that does not match the shape, NaN or Inf, broken or deeply nested JSON, a missing part) gets a
4xx answer with a JSON message while the server keeps serving. The model comes from
classifier.py, the request format and its checks from wire.py (shared with batching_server.py).
"""
import argparse

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from ch15_deploy.classifier import load_classifier, model_arguments, prob_nodule
from ch15_deploy.flags import at_least, server_arguments
from ch15_deploy.wire import (
    CROP_SHAPE,
    DTYPE,
    LOOPBACK,
    MAX_BYTES,
    decode_crop,
    parse_form_parts,
    parse_shape_header,
    quoted,
)
from common.device import add_device_argument, pick_device
from common.errors import DataError, run_cli


def parse_multipart(req):
    """(shape, dtype, blob bytes) from the book's form: a JSON `meta` part and a `blob` part."""
    if "meta" in req.files:
        meta = req.files["meta"].read()
    else:
        meta = req.form.get("meta")
    if meta is not None and "blob" not in req.files and "blob" in req.form:
        # a text field: its bytes were decoded
        raise ValueError("'blob' must be a file part (give it a filename), not a text field")
    return parse_form_parts(meta, req.files["blob"].read() if "blob" in req.files else None)


def parse_raw(req):
    """(shape, dtype, blob bytes) from an octet-stream body with X-Shape (and X-Dtype) headers."""
    shape = parse_shape_header(req.headers.get("X-Shape"))
    return shape, req.headers.get("X-Dtype", DTYPE), req.get_data(cache=False)


def run_inference(model, crop):
    """P(nodule) for one (1, 32, 48, 48) crop."""
    return float(prob_nodule(model, crop.unsqueeze(0))[0])     # add the batch dimension


def create_app(model, max_bytes=MAX_BYTES, crop_shape=CROP_SHAPE):
    """The Flask app around an eval-mode classifier; tests drive it with app.test_client()."""
    model.eval()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_bytes    # larger bodies: 413, never read

    @app.errorhandler(HTTPException)
    def http_error(e):                              # 404, 405, 413, ...: JSON instead of HTML
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def server_error(e):                            # our fault, not the client's: still JSON
        app.logger.exception("error in %s", request.path)
        return jsonify(error=f"internal error ({type(e).__name__})"), 500

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
                return jsonify(error=f"unsupported content type {quoted(request.mimetype)}: send "
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[model_arguments(), server_arguments()])
    p.add_argument("--max-bytes", type=at_least(int, 1), default=MAX_BYTES,
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
