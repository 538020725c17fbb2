"""Chapter 15: how both servers answer and log what goes wrong, so the handlers need not.

Every 4xx and 5xx is a JSON body {"error": "..."} (never Flask's or aiohttp's HTML page), and no
answer carries NaN (JSON has none: `dumps` refuses it). A request so malformed that aiohttp
cannot parse it (a bad request line, a bad header) is answered 400 by aiohttp and logged here
as one access-log line, where aiohttp would print a traceback. A body refused as too large while
it is still arriving ends its connection: the 413, then the server's end of it (the Flask
server's under waitress: wsgi_serving.py).
"""
import asyncio
import functools
import json
import logging
import time
import warnings

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from common.errors import one_line

RETRY_AFTER_S = 1                   # what a 503 asks the client to wait
dumps = functools.partial(json.dumps, allow_nan=False)   # NaN or Inf: ValueError, a 500


def json_error(status, message, headers=None):
    """An aiohttp JSON answer {"error": message}."""
    return web.json_response({"error": message}, status=status, headers=headers, dumps=dumps)


class ClosingResponse(web.Response):
    """An answer after which the server sends nothing more on the connection: once it is
    written the sending side is shut (FIN), so the client sees the whole answer and the end at
    once, while aiohttp still reads and drops what the client was sending (its lingering),
    so that no reset can cut the answer off."""

    def __init__(self, transport, **kwargs):
        super().__init__(**kwargs)
        self._sender = transport
        self.force_close()                                  # Connection: close, no keep-alive

    async def write_eof(self, data=b""):
        await super().write_eof(data)
        if self._sender is not None and not self._sender.is_closing() \
                and self._sender.can_write_eof():
            self._sender.write_eof()


def too_large_answer(request, message):
    """413 {"error": message}, and the connection ends (ClosingResponse): its body may still be
    arriving."""
    return ClosingResponse(request.transport, status=413, text=dumps({"error": message}),
                           content_type="application/json")


def unavailable(message):
    """503 with Retry-After: a full queue, or a server shutting down."""
    return json_error(503, message, {"Retry-After": str(RETRY_AFTER_S)})


@web.middleware
async def json_errors(request, handler):
    """aiohttp: 404, 405, 413, ... and unexpected failures as JSON {"error": ...}, never HTML."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k in ("Retry-After", "Allow")}
        detail = e.text if e.text and not e.text.startswith(f"{e.status}:") else ""
        message = f"{e.reason}: {detail}" if detail else e.reason
        if e.status == 413:                     # refused from its length, or mid-body
            return too_large_answer(request, message)
        return json_error(e.status, message, headers)
    except (ConnectionError, asyncio.CancelledError):   # the client went away mid-request
        raise
    except Exception as e:
        request.app.logger.exception("error in %s", request.path)
        return json_error(500, f"internal error ({type(e).__name__})")


def add_json_errors(app):
    """Flask: the same JSON answers for 404, 405, 413, ... and for the server's own failures."""
    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def server_error(e):                            # our fault, not the client's: still JSON
        app.logger.exception("error in %s", request.path)
        return jsonify(error=f"internal error ({type(e).__name__})"), 500

    return app


def access_line(peer, error):
    """One access-log line for a request aiohttp could not parse, in its access log's shape."""
    stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]")
    lines = [s.strip() for s in str(error.message).splitlines() if s.strip(" ^")]
    return one_line(f'{peer} {stamp} "-" 400 malformed request ({type(error).__name__}: '
                    f'{" ".join(lines)})', 240)


def one_line_for_malformed(record):
    """Logging filter: aiohttp's report of an unparsable request becomes one access-log line;
    its other debug records are dropped; real errors keep their traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.msg, record.args = "%s", (access_line(record.args[0] if record.args else "-",
                                                     error),)
        record.exc_info = record.exc_text = None
        return True
    return record.levelno >= logging.WARNING


def bad_client_logging():
    """The logger to give aiohttp's request handler (web.run_app(logger=...)): stderr, with
    one_line_for_malformed in front; and no warning for each odd Content-Disposition a client
    sends (their header, not news)."""
    warnings.filterwarnings("ignore", category=aiohttp.BadContentDispositionHeader)
    warnings.filterwarnings("ignore", category=aiohttp.BadContentDispositionParam)
    logger = logging.getLogger("ch15_deploy.requests")
    logger.setLevel(logging.DEBUG)       # aiohttp reports a first request of garbage at DEBUG
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.addFilter(one_line_for_malformed)
        logger.addHandler(handler)
    return logger
