"""Chapter 15: the /image route's bytes and tensors: JPEG or PNG in, the generator's JPEG out.

The image's size is read from its own header (a PNG's IHDR, a JPEG's frame header) before
Pillow decodes anything, so a small file declaring 30000 x 30000 pixels (a decompression bomb)
is refused undecoded. Every image is resized to one fixed square so that images from different
clients stack into one batch (the book's 228 x 228; the aspect ratio is not kept).
"""
import io
import struct

import numpy as np
from PIL import Image

from ch01_intro.horse2zebra import to_image
from ch01_intro.preprocess import to_chw
from ch15_deploy.wire import quoted

MAX_IMAGE_BYTES = 1 << 22           # the book's cap on an uploaded image (4 MiB)
MAX_PIXELS = 4096 * 3072            # larger images are refused from their header, undecoded
IMAGE_SIZE = 228                    # the book's 228 x 228; a multiple of 4 for the generator
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_header(data):
    """(format, width, height) from a PNG's IHDR or a JPEG's frame header, before any decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("the PNG has no IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data[:2] != b"\xff\xd8":
        raise ValueError("the body is not a JPEG or PNG image")
    pos = 2
    while pos + 4 <= len(data):              # walk the markers up to the frame header (SOFn)
        if data[pos] != 0xFF:
            raise ValueError("the JPEG's markers are corrupt")
        marker = data[pos + 1]
        if marker == 0xFF:                   # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:    # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return "JPEG", width, height
        if marker == 0xDA or length < 2:     # image data before any frame header
            break
        pos += 2 + length
    raise ValueError("the JPEG has no frame header with its size")


def decode_image(data, size=IMAGE_SIZE, max_pixels=MAX_PIXELS):
    """JPEG or PNG bytes -> (3, size, size) float32 in [0, 1].

    ValueError says what is wrong with the image; OverflowError that it has too many pixels
    (read from the header, so a decompression bomb is never decoded).
    """
    _, width, height = image_header(data)
    if width * height > max_pixels:
        raise OverflowError(f"image is {width}x{height}; at most {max_pixels:,} pixels accepted")
    if width == 0 or height == 0:
        raise ValueError(f"image is {width}x{height}")
    try:
        image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])   # the header only
        image.draft("RGB", (size, size))              # JPEG: decode at 1/2..1/8 scale if enough
        image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except Exception as e:       # truncated or corrupt data: Pillow's errors are not one type
        raise ValueError(f"cannot decode the image ({type(e).__name__}: {quoted(str(e), 80)})") \
            from None
    return to_chw(np.array(image)) / 255.0               # a writable copy for torch


def encode_jpeg(out, quality=90):
    """(3, S, S) generator output in [-1, 1] -> JPEG bytes, through horse2zebra's to_image."""
    buffer = io.BytesIO()
    Image.fromarray(to_image(out.unsqueeze(0))).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
