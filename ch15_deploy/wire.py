"""Chapter 15: how a crop travels over HTTP, both ends: the client's encoding, the servers' checks.

The book's request is a multipart form with a `meta` part (JSON {"shape": [1, 32, 48, 48],
"dtype": "float32"}; the book sent no dtype) and a `blob` part with the crop's little-endian
float32 bytes. The other encoding is the bytes as an application/octet-stream body with an
`X-Shape: 1,32,48,48` header (and optionally `X-Dtype: float32`). Both servers (Flask and
aiohttp) parse with these functions, and the client and the load test encode with them, so the
format is written down once. Nothing here is pickled: a crop is only ever read as float32
bytes. Every check raises ValueError with a message meant for the client (the servers answer it
as a 4xx JSON body); values the client sent are quoted shortened, never whole.
"""
import json
import math
import uuid

import numpy as np
import torch

from common.errors import one_line

CROP_SHAPE = (1, 32, 48, 48)       # channel, index, row, column: one crop in HU
DTYPE = "float32"                  # sent little-endian ("<f4"), 4 bytes a voxel: 288 KiB a crop
MAX_BYTES = 1 << 20                # default cap on a /predict body: larger ones get 413 unread
MAX_META_BYTES = 4096              # {"shape": [1, 32, 48, 48], "dtype": "float32"} is 45 bytes
MAX_JSON_DEPTH = 4                 # the meta object holds one list: depth 2
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NOT_FINITE = ("the model's output for this crop is not finite (NaN or Inf); a crop holds CT "
              "values in HU, about -1000..1000")        # a 422: the model passed its start-up try


def quoted(value, limit=60):
    """repr(value) cut to `limit` characters: a client's value in a message, never all of it."""
    return one_line(repr(value), limit)


def json_depth(text):
    """The deepest nesting of [ and { in JSON text, outside strings (no parsing, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_meta(meta):
    """(shape, dtype) from the `meta` part's JSON (str or bytes); the book sent no dtype."""
    size = len(meta.encode("utf-8", "replace")) if isinstance(meta, str) else len(meta)
    if size > MAX_META_BYTES:
        raise ValueError(f"'meta' is {size} bytes; at most {MAX_META_BYTES} accepted")
    if isinstance(meta, (bytes, bytearray)):
        try:
            meta = bytes(meta).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("'meta' is not valid JSON (not UTF-8 text)") from None
    depth = json_depth(meta)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"'meta' JSON is nested {depth} deep; at most {MAX_JSON_DEPTH} accepted")
    try:
        parsed = json.loads(meta)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"'meta' is not valid JSON ({one_line(e, 80)})") from None
    if not isinstance(parsed, dict) or "shape" not in parsed:
        raise ValueError('\'meta\' must be a JSON object like {"shape": [1, 32, 48, 48], '
                         '"dtype": "float32"}')
    return parsed["shape"], parsed.get("dtype", DTYPE)


def parse_form_parts(meta, blob):
    """(shape, dtype, blob) from the form's two parts, each None when the form lacks it."""
    if meta is None:
        raise ValueError("missing form part 'meta' (JSON with shape and dtype)")
    if blob is None:
        raise ValueError("missing form part 'blob' (the crop's raw float32 bytes)")
    shape, dtype = parse_meta(meta)
    return shape, dtype, blob


def parse_shape_header(header):
    """[1, 32, 48, 48] from an X-Shape header value such as "1,32,48,48"."""
    if not header:
        raise ValueError("missing header X-Shape (e.g. X-Shape: 1,32,48,48)")
    try:
        return [int(s) for s in header.split(",")]
    except ValueError:
        raise ValueError(f"X-Shape {quoted(header)} is not a comma-separated list of "
                         "integers") from None


def decode_crop(shape, dtype, blob, expected_shape=CROP_SHAPE):
    """Check what a client sent and turn it into a float32 tensor; ValueError says what is wrong."""
    if (not isinstance(shape, list) or not all(type(s) is int for s in shape)
            or tuple(shape) != tuple(expected_shape)):
        raise ValueError(f"shape must be {list(expected_shape)}, got {quoted(shape)}")
    if dtype != DTYPE:
        raise ValueError(f"dtype must be {DTYPE!r}, got {quoted(dtype)}")
    need = math.prod(shape) * 4
    if len(blob) != need:
        raise ValueError(f"blob has {len(blob)} bytes; shape {shape} in {DTYPE} needs {need}")
    array = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(shape)  # own copy
    if not np.isfinite(array).all():
        raise ValueError("crop holds NaN or Inf values")
    return torch.from_numpy(array)


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


def encode_crop(crop, raw=False):
    """(body, headers) carrying `crop` as the book's form (meta + blob), or raw with X-Shape."""
    blob = crop.detach().cpu().contiguous().numpy().astype("<f4").tobytes()
    shape = list(crop.shape)
    if raw:
        return blob, {"Content-Type": "application/octet-stream",
                      "X-Shape": ",".join(map(str, shape)), "X-Dtype": DTYPE}
    meta = json.dumps({"shape": shape, "dtype": DTYPE}).encode()
    body, content_type = encode_multipart([
        ("meta", "meta.json", "application/json", meta),
        ("blob", "crop.f32", "application/octet-stream", blob),
    ])
    return body, {"Content-Type": content_type}
