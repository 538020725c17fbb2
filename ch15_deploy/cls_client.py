"""Chapter 15: send the book's validation crop to the classifier server and print the answer.

    python ch15_deploy/flask_server.py &      # or with --random-weights
    python ch15_deploy/cls_client.py          # --url http://127.0.0.1:8000/predict, --raw

The crop is the book's `p3ch15/cls_val_example.pt`: a tuple of the 1 x 32 x 48 x 48 crop in HU,
its one-hot label (not nodule, nodule), its series uid and its center. It is loaded with
weights_only=True. The request is the book's multipart form (a JSON `meta` part and a `blob`
part with the float32 bytes), built here by hand with the standard library instead of
`requests`; `--raw` sends the bytes as the body with an X-Shape header instead.
"""
import argparse
import json
import urllib.error
import urllib.request
import uuid

import numpy as np
import torch

from common.data import add_data_dir_argument, book_file
from common.errors import DataError, run_cli

EXAMPLE = "p3ch15/cls_val_example.pt"
DEFAULT_URL = "http://127.0.0.1:8000/predict"


def load_example(data_dir=None):
    """(crop (1, 32, 48, 48) float32 HU, one-hot label, series uid, center) from the book."""
    path = book_file(EXAMPLE, data_dir, name="cls-val-example")
    try:
        crop, label, series_uid, center = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise DataError(f"{path}: not the book's (crop, label, uid, center) tuple "
                        f"({type(e).__name__})") from None
    return crop.float(), label, series_uid, center


def hu_like_crop(seed=0, shape=(1, 32, 48, 48)):
    """A stand-in crop when the book's is absent: lung-like HU noise with a dense blob."""
    g = torch.Generator().manual_seed(seed)
    crop = torch.randn(shape, generator=g) * 150 - 700               # aerated lung, about -700
    i, r, c = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - n / 2
                               for n in shape[1:]), indexing="ij")
    crop[0][(i**2 + r**2 + c**2) < 25] += 750                         # a 5-voxel ball near 0 HU
    return crop.clamp(-1000, 1000)


def encode_multipart(parts):
    """(body, content type) of a multipart/form-data request from (name, filename, type, data)."""
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in data for *_, data in parts):     # never inside a part
        boundary = uuid.uuid4().hex
    body = b""
    for name, filename, content_type, data in parts:
        body += (f"--{boundary}\r\n"
                 f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def crop_request(crop, url=DEFAULT_URL, raw=False):
    """A POST carrying `crop` as the book's form (meta + blob), or as raw bytes with X-Shape."""
    blob = crop.detach().cpu().contiguous().numpy().astype("<f4").tobytes()
    shape = list(crop.shape)
    if raw:
        headers = {"Content-Type": "application/octet-stream",
                   "X-Shape": ",".join(map(str, shape)), "X-Dtype": "float32"}
        return urllib.request.Request(url, data=blob, headers=headers, method="POST")
    meta = json.dumps({"shape": shape, "dtype": "float32"}).encode()
    body, content_type = encode_multipart([
        ("meta", "meta.json", "application/json", meta),
        ("blob", "crop.f32", "application/octet-stream", blob),
    ])
    return urllib.request.Request(url, data=body, headers={"Content-Type": content_type},
                                  method="POST")


def send_crop(crop, url=DEFAULT_URL, raw=False, timeout=30.0):
    """POST one crop to the server; its JSON answer as a dict. Errors become one-line DataErrors."""
    try:
        with urllib.request.urlopen(crop_request(crop, url, raw), timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:               # the server answered, with an error
        try:
            message = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            message = e.reason
        raise DataError(f"server answered {e.code}: {message}") from None
    except urllib.error.URLError as e:                # nobody answered
        raise DataError(f"cannot reach {url} ({e.reason}); start the server first: "
                        "python ch15_deploy/flask_server.py") from None


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
    crop, label, series_uid, center = load_example(args.data_dir)
    print(f"crop {tuple(crop.shape)} {str(crop.dtype).removeprefix('torch.')}, HU "
          f"{float(crop.min()):.0f}..{float(crop.max()):.0f}; series {series_uid}; "
          f"center {np.round(center.tolist(), 2).tolist()}")
    print(f"label: {describe_label(label)} (one-hot {label.tolist()})")
    answer = send_crop(crop, args.url, raw=args.raw, timeout=args.timeout)
    print(f"server: {json.dumps(answer)}")
    p_nodule = answer["prob_nodule" if "prob_nodule" in answer else "prob_malignant"]
    predicted = "a nodule" if p_nodule > 0.5 else "not a nodule"
    verdict = "matches" if predicted == describe_label(label) else "does NOT match"
    print(f"P(nodule) = {p_nodule:.4g} -> {predicted}; {verdict} the label "
          "(the book's 'prob_malignant' is this P(nodule))")
    return {"answer": answer, "label": label.tolist(), "predicted": predicted}


if __name__ == "__main__":
    run_cli(main)
