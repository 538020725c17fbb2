"""Hostile request bodies for both servers: each gets a JSON answer, never a 500.

A part header a server can ignore (an odd filename*, an unknown charset on a JSON part) may
still be answered 200; everything else is a 4xx with a message.

Shared by test_flask_server.py and test_batching_server.py; every case is a /predict POST
(name: (body, content type)), and the image cases are /image bodies for the batching server.
MALFORMED_HTTP holds requests that are not even HTTP (test_faults.py): a 400, one log line.
"""
import io
import struct
import zlib

import numpy as np
from PIL import Image

GOOD_BLOB = bytes(32 * 48 * 48 * 4)                  # zeros: a valid crop
META = b'{"shape": [1, 32, 48, 48]}'
BOUNDARY = "hostile"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def part(headers, data):
    return f"--{BOUNDARY}\r\n".encode() + headers + b"\r\n\r\n" + data + b"\r\n"


def blob_part():
    return part(b'Content-Disposition: form-data; name="blob"; filename="b"', GOOD_BLOB)


def meta_part(meta):
    return part(b'Content-Disposition: form-data; name="meta"', meta)


END = f"--{BOUNDARY}--\r\n".encode()
DISPOSITION = b'Content-Disposition: form-data; name="meta"'

PREDICT = {   # name: (body, content type)
    "json nested 100000 deep": (meta_part(b"[" * 100_000 + b"]" * 100_000) + blob_part() + END,
                                FORM),
    "json nested 2000 deep in 4000 bytes": (meta_part(b"[" * 2000 + b"]" * 2000) + blob_part()
                                            + END, FORM),
    "json object nested 700 deep": (meta_part(b'{"a":' * 700 + b"1" + b"}" * 700) + blob_part()
                                    + END, FORM),
    "json nested 5 deep": (meta_part(b'{"shape": [[[[1]]]]}') + blob_part() + END, FORM),
    "meta of 8 KiB": (meta_part(b'{"shape": [1, 32, 48, 48], "x": "' + b"a" * 8192 + b'"}')
                      + blob_part() + END, FORM),
    "header line without a colon": (part(b"this is not a header", META) + blob_part() + END,
                                    FORM),
    "header of 100 KB": (part(DISPOSITION + b"; x=" + b"a" * 100_000, META) + END, FORM),
    "5000 part headers": (part(b"\r\n".join(b"X-%d: y" % i for i in range(5000)), META) + END,
                          FORM),
    "disposition without a name": (part(b"Content-Disposition: form-data", META) + END, FORM),
    "unterminated quote": (part(b'Content-Disposition: form-data; name="meta', META)
                           + blob_part() + END, FORM),
    "bad filename*": (part(b"Content-Disposition: form-data; name=\"meta\"; "
                           b"filename*=bogus'x'%zz", META) + blob_part() + END, FORM),
    "unknown charset": (part(DISPOSITION + b"\r\nContent-Type: text/plain; charset=nope", META)
                        + blob_part() + END, FORM),
    "base64 that is not": (part(DISPOSITION + b"\r\nContent-Transfer-Encoding: base64",
                                b"!!!") + blob_part() + END, FORM),
    "gzip that is not": (part(DISPOSITION + b"\r\nContent-Encoding: gzip", b"nope")
                         + blob_part() + END, FORM),
    "nested multipart": (part(DISPOSITION + b"\r\nContent-Type: multipart/mixed; boundary=zz",
                              b"--zz\r\n\r\nx\r\n--zz--") + END, FORM),
    "no closing boundary": (meta_part(META), FORM),
    "empty body": (b"", FORM),
    "no boundary": (b"x", "multipart/form-data"),
    "empty boundary": (b"x", "multipart/form-data; boundary="),
    "boundary of 200 characters": (b"x", "multipart/form-data; boundary=" + "a" * 200),
    "non-UTF-8 meta": (meta_part(b"\xff\xfe\xfd") + blob_part() + END, FORM),
    "shape of 1001 entries": (meta_part(b'{"shape": [' + b"1," * 1000 + b"1]}")
                                + blob_part() + END, FORM),
}


def png_header(width, height):
    """A PNG signature and IHDR chunk declaring width x height, then no image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def jpeg_declaring(width, height):
    """A real small JPEG whose frame header (SOF0) claims width x height."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


IMAGES = {    # name: (body, status, words in the error)
    "PNG declaring 30000 x 30000 (a decompression bomb)": (png_header(30_000, 30_000), 413,
                                                           "pixels accepted"),
    "PNG declaring 5000 x 5000": (png_header(5000, 5000), 413, "pixels accepted"),
    "JPEG declaring 20000 x 20000": (jpeg_declaring(20_000, 20_000), 413, "pixels accepted"),
    "PNG header, no data": (png_header(64, 64), 400, "cannot decode"),
    "PNG signature only": (b"\x89PNG\r\n\x1a\n", 400, "no IHDR"),
    "PNG 0 x 0": (png_header(0, 0), 400, "0x0"),
    "JPEG start only": (b"\xff\xd8", 400, "no frame header"),
    "JPEG with broken markers": (b"\xff\xd8\x00\x00garbage", 400, "markers are corrupt"),
}


MALFORMED_HTTP = {   # name: the bytes a client sends on a fresh connection (not even HTTP)
    "garbage request line": b"GARBAGE\r\n\r\n",
    "spaces in the target": b"GET /x y z HTTP/1.1\r\nHost: a\r\n\r\n",
    "header line without a colon": b"GET /stats HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    "HTTP/9.9": b"GET /stats HTTP/9.9\r\n\r\n",
    "Content-Length not a number": (b"POST /predict HTTP/1.1\r\nHost: a\r\n"
                                    b"Content-Length: x\r\n\r\n"),
    "two Content-Lengths": (b"POST /predict HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                            b"Content-Length: 2\r\n\r\nx"),
    "request line of 10000 bytes": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
    "header of 10000 bytes": b"GET /stats HTTP/1.1\r\nX: " + b"b" * 10_000 + b"\r\n\r\n",
    "200 headers": (b"GET /stats HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200))
                    + b"\r\n"),
    "NUL in a header": b"GET /stats HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    "non-ASCII method": b"G\xc9T / HTTP/1.1\r\n\r\n",
    "bad chunk size": (b"POST /predict HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\n"),
    "TLS hello on the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}
