"""Chapter 15: a request's crop or image bytes, read out of a Flask or aiohttp request.

A /predict body is the book's multipart form (a JSON `meta` part and a `blob` part) or raw
float32 bytes with an X-Shape header (wire.py holds the format and its checks); any other
content type is a 415. The aiohttp readers refuse (413) a body over the size cap from its
Content-Length, or as soon as a chunked body passes it, before it is all in memory.
"""
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from werkzeug.exceptions import UnsupportedMediaType

from ch15_deploy.wire import DTYPE, parse_form_parts, parse_shape_header, quoted

CHUNK = 1 << 16


def unsupported(content_type):
    return (f"unsupported content type {quoted(content_type)}: send multipart/form-data "
            "(meta + blob) or application/octet-stream with X-Shape")


def flask_crop_parts(req):
    """(shape, dtype, blob bytes) of a Flask /predict request; ValueError when malformed."""
    if req.mimetype == "multipart/form-data":
        meta = req.files["meta"].read() if "meta" in req.files else req.form.get("meta")
        if meta is not None and "blob" not in req.files and "blob" in req.form:
            # a text field: its bytes were decoded
            raise ValueError("'blob' must be a file part (give it a filename), not a text field")
        return parse_form_parts(meta, req.files["blob"].read() if "blob" in req.files else None)
    if req.mimetype == "application/octet-stream":
        shape = parse_shape_header(req.headers.get("X-Shape"))
        return shape, req.headers.get("X-Dtype", DTYPE), req.get_data(cache=False)
    raise UnsupportedMediaType(unsupported(req.mimetype))


def too_large(max_bytes, size):
    return web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)


async def read_body(request, max_bytes):
    """The whole aiohttp body, refusing (413) one over max_bytes before or while it streams in."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large(max_bytes, request.content_length)
    body = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise too_large(max_bytes, len(body))
    return bytes(body)


async def read_form(request, max_bytes):
    """(shape, dtype, blob) from the book's multipart form, at most max_bytes of parts."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large(max_bytes, request.content_length)
    parts, total = {}, 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValueError("nested multipart bodies are not accepted")
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise too_large(max_bytes, total)
                data += chunk
            parts[part.name] = bytes(data)
    except (ValueError, AssertionError, RuntimeError, LookupError, HttpProcessingError) as e:
        # aiohttp's reader on a bad body or part header (HttpProcessingError: a header line
        # without a colon, too long, too many; LookupError: an unknown charset)
        detail = e.message if isinstance(e, HttpProcessingError) else str(e)
        raise ValueError(f"malformed multipart body ({type(e).__name__}: "
                         f"{quoted(detail, 80)})") from None
    return parse_form_parts(parts.get("meta"), parts.get("blob"))


async def aiohttp_crop_parts(request, max_bytes):
    """(shape, dtype, blob bytes) of an aiohttp /predict request; ValueError when malformed."""
    if request.content_type == "multipart/form-data":
        return await read_form(request, max_bytes)
    if request.content_type == "application/octet-stream":
        shape = parse_shape_header(request.headers.get("X-Shape"))
        return shape, request.headers.get("X-Dtype", DTYPE), await read_body(request, max_bytes)
    raise web.HTTPUnsupportedMediaType(text=unsupported(request.content_type))
