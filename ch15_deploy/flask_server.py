"""Chapter 15: serve the LUNA nodule classifier over HTTP with Flask (book 15.1, 15.2).

    python ch15_deploy/flask_server.py                   # the book's checkpoint on 127.0.0.1:8000
    python ch15_deploy/flask_server.py --random-weights  # a demo without the checkpoint
    python ch15_deploy/cls_client.py                     # in a second shell: send the book's crop

GET /hello answers "Hello World!" (the book's first server). POST /predict takes one
1 x 32 x 48 x 48 float32 crop in HU, as the book's multipart form (`meta` JSON and `blob`
bytes) or raw bytes with an X-Shape header (wire.py), and answers
{"prob_malignant": p, "prob_nodule": p}: p is P(nodule), under the book's name and the right
one. A bad request gets a 4xx with a JSON message. The app runs under waitress
(wsgi_serving.py): 503 with Retry-After when too busy; SIGTERM or Ctrl-C answers the requests in
flight, then exits 0. Departures from the book and figures: NOTES.md.
"""
import math

from flask import Flask, jsonify, request

from ch15_deploy.classifier import prob_nodule
from ch15_deploy.http_errors import add_json_errors
from ch15_deploy.request_bodies import flask_crop_parts
from ch15_deploy.served_models import load_cls_model
from ch15_deploy.server_flags import flask_server_args
from ch15_deploy.wire import CROP_SHAPE, LOOPBACK, MAX_BYTES, NOT_FINITE, decode_crop
from ch15_deploy.wsgi_serving import serve_until_stopped, start_server, stop_on_signals
from common.device import pick_device
from common.errors import run_cli


def run_inference(model, crop):
    """P(nodule) for one (1, 32, 48, 48) crop."""
    return float(prob_nodule(model, crop.unsqueeze(0))[0])     # add the batch dimension


def create_app(model, max_bytes=MAX_BYTES, crop_shape=CROP_SHAPE):
    """The Flask app around an eval-mode classifier; tests drive it with app.test_client()."""
    model.eval()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_bytes    # larger bodies: 413, never read

    @app.get("/hello")
    def hello():
        return "Hello World!"

    @app.post("/predict")
    def predict():
        try:
            shape, dtype, blob = flask_crop_parts(request)       # the book's form, or raw bytes
            crop = decode_crop(shape, dtype, blob, crop_shape)   # a checked float32 tensor
        except ValueError as e:
            return jsonify(error=str(e)), 400
        p = run_inference(model, crop)
        if not math.isfinite(p):        # JSON has no NaN; the model passed its start-up try
            return jsonify(error=NOT_FINITE), 422
        return jsonify(prob_malignant=p, prob_nodule=p)  # the book's (misleading) name, and ours

    return add_json_errors(app)                     # 404, 405, 413, 415, 500 as JSON too


def classify(model, crops):
    """The start-up try's forward: (N, 1, 32, 48, 48) -> (N,) P(nodule)."""
    return prob_nodule(model, crops)


def main(argv=None):
    args = flask_server_args(argv, __doc__.split("\n\n")[0])
    model, _ = load_cls_model(classify, args.model, random_weights=args.random_weights,
                              data_dir=args.data_dir, device=pick_device(args.device),
                              flag="--model", channels_last=False, compiled=args.compile)
    served = start_server(create_app(model, max_bytes=args.max_bytes), args.host, args.port,
                          args.threads, args.max_queue, max_body=args.max_bytes)
    what = "an untrained LunaModel" if args.random_weights else "the nodule classifier"
    print(f"serving {what} on http://{args.host}:{served['port']}/predict "
          f"(and /hello); Ctrl-C stops", flush=True)
    if args.host not in LOOPBACK:
        print(f"note: bound to {args.host}: reachable from other machines")
    with stop_on_signals(served):                   # SIGTERM and Ctrl-C: a graceful stop
        answered = serve_until_stopped(served)
    print("stopped" if answered else "stopped; some requests were still unanswered")
    return served


if __name__ == "__main__":
    run_cli(main)
