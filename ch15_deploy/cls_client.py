"""Chapter 15: send the book's validation crop to the classifier server and print the answer.

    python ch15_deploy/flask_server.py &      # or with --random-weights
    python ch15_deploy/cls_client.py          # --url http://127.0.0.1:8000/predict, --raw

The crop is the book's `p3ch15/cls_val_example.pt` (classifier.load_example: read with
weights_only=True). The request is the book's multipart form (a JSON `meta` part and a `blob`
part with the float32 bytes, wire.encode_crop), sent with the standard library instead of
`requests`; `--raw` sends the bytes as the body with an X-Shape header instead. Whatever goes
wrong on the way (nobody listening, a reset connection, no answer within --timeout, an error
status, an HTML page or JSON without the probability) ends in one line naming the URL.
"""
import argparse
import http.client
import json
import math
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import numpy as np

from ch15_deploy.classifier import load_example
from ch15_deploy.wire import encode_crop, quoted
from common.data import add_data_dir_argument
from common.errors import DataError, one_line, run_cli

DEFAULT_URL = "http://127.0.0.1:8000/predict"
MAX_ANSWER = 1 << 20                 # bytes read from the server: an answer is ~80
FIELDS = ("prob_nodule", "prob_malignant")   # ours, then the book's name for the same number


def check_url(url):
    """The URL, if it is http(s) with a host; DataError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DataError(f"--url {quoted(url)}: not an http:// URL with a host")
    return url


def crop_request(crop, url=DEFAULT_URL, raw=False):
    """A urllib POST carrying `crop` as the book's form (meta + blob), or raw with X-Shape."""
    body, headers = encode_crop(crop, raw)
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def error_message(e):
    """What an error answer says: its JSON `error`, else what kind of page it was."""
    try:
        body = e.read(MAX_ANSWER)
    except (OSError, http.client.HTTPException):
        body = b""
    try:
        message = json.loads(body).get("error")
        if isinstance(message, str):
            return one_line(message, 200)
    except (ValueError, AttributeError, RecursionError):
        pass
    kind = e.headers.get_content_type() if e.headers else "no content type"
    return f"{e.reason} ({'an HTML page' if kind == 'text/html' else kind}, no JSON message)"


def read_answer(body, content_type, url):
    """The server's JSON object with a probability in [0, 1]; DataError for anything else."""
    if len(body) > MAX_ANSWER:
        raise DataError(f"{url}: the answer is over {MAX_ANSWER} bytes; not this server's")
    what = "an HTML page" if content_type == "text/html" else content_type
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise DataError(f"{url}: the server answered {what}, not JSON "
                        f"({quoted(body[:40])})") from None
    if not isinstance(answer, dict):
        raise DataError(f"{url}: the answer is JSON but not an object ({quoted(answer)})")
    field = next((f for f in FIELDS if f in answer), None)
    p = answer.get(field)
    if (field is None or isinstance(p, bool) or not isinstance(p, (int, float))
            or not math.isfinite(p) or not 0 <= p <= 1):
        raise DataError(f"{url}: the answer has no probability in [0, 1] under "
                        f"{' or '.join(FIELDS)} ({quoted(answer)})")
    return answer


def send_crop(crop, url=DEFAULT_URL, raw=False, timeout=30.0):
    """POST one crop to the server; its JSON answer as a dict. Errors become one-line DataErrors."""
    check_url(url)
    try:
        with urllib.request.urlopen(crop_request(crop, url, raw), timeout=timeout) as response:
            body = response.read(MAX_ANSWER + 1)
            content_type = response.headers.get_content_type()
            if response.length and len(body) <= MAX_ANSWER:     # fewer bytes than announced
                raise http.client.IncompleteRead(body, response.length)
    except urllib.error.HTTPError as e:               # the server answered, with an error
        raise DataError(f"{url}: server answered {e.code}: {error_message(e)}") from None
    except urllib.error.URLError as e:                # nobody answered, or hung up at once
        if isinstance(e.reason, TimeoutError):
            raise DataError(f"{url}: no connection within {timeout:g} s") from None
        if isinstance(e.reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            raise DataError(f"{url}: the connection broke before a whole answer came "
                            f"({type(e.reason).__name__})") from None
        raise DataError(f"cannot reach {url} ({e.reason}); start the server first: "
                        "python ch15_deploy/flask_server.py") from None
    except TimeoutError:                              # connected, then silence
        raise DataError(f"{url}: no answer within {timeout:g} s (--timeout)") from None
    except (http.client.HTTPException, OSError) as e:  # reset, closed early, garbled status
        raise DataError(f"{url}: the connection broke before a whole answer came "
                        f"({type(e).__name__})") from None
    return read_answer(body, content_type, url)


def describe_label(label):
    return "a nodule" if int(label[1]) == 1 else "not a nodule"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help="(default: %(default)s)")
    p.add_argument("--raw", action="store_true",
                   help="send raw bytes with an X-Shape header instead of the multipart form")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default: %(default)s)")
    add_data_dir_argument(p)
    args = p.parse_args(argv)
    if not args.timeout > 0:
        p.error(f"--timeout {args.timeout}: must be > 0 seconds")
    check_url(args.url)
    crop, label, series_uid, center = load_example(args.data_dir)
    print(f"crop {tuple(crop.shape)} {str(crop.dtype).removeprefix('torch.')}, HU "
          f"{float(crop.min()):.0f}..{float(crop.max()):.0f}; series {series_uid}; "
          f"center {np.round(center.tolist(), 2).tolist()}")
    print(f"label: {describe_label(label)} (one-hot {label.tolist()})")
    answer = send_crop(crop, args.url, raw=args.raw, timeout=args.timeout)
    print(f"server: {json.dumps(answer)}")
    p_nodule = answer[next(f for f in FIELDS if f in answer)]
    predicted = "a nodule" if p_nodule > 0.5 else "not a nodule"
    verdict = "matches" if predicted == describe_label(label) else "does NOT match"
    print(f"P(nodule) = {p_nodule:.4g} -> {predicted}; {verdict} the label "
          "(the book's 'prob_malignant' is this P(nodule))")
    return {"answer": answer, "label": label.tolist(), "predicted": predicted}


if __name__ == "__main__":
    run_cli(main)
