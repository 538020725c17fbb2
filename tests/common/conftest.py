"""Downloader test fixtures: the book's files, and a loopback HTTP server that misbehaves."""
import http.server
import threading
import urllib.parse
from pathlib import Path

import pytest

from common.data import REPO_ROOT, data_root

PROBE = "p1ch4/tabular-wine/winequality-white.csv"


@pytest.fixture
def book_data():
    """The book repository's data folder: the data root if it holds the files, else ../shared."""
    for folder in (data_root(), REPO_ROOT.parent / "shared" / "dlwpt-data"):
        if (folder / PROBE).is_file():
            return folder
    pytest.skip(f"the book's data files are absent (looked for {PROBE} under $DLWPT_DATA, data/"
                " and ../shared/dlwpt-data)")


class FileHandler(http.server.BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-`, plus the failures the server object asks for."""

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        path = srv.root / urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if srv.corrupt:                          # same length, other bytes
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start, ranged = 0, self.headers.get("Range")
        if ranged and not srv.ignore_range:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.truncations > 0:                  # promise the whole body, send a piece, hang up
            srv.truncations -= 1
            body = body[:srv.truncate_at]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve(monkeypatch):
    """serve(folder) -> a running loopback server of the folder's files; .url, .log, and
    switches for failures. serve(None, handler) runs another request handler the same way."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers = []

    def start(root, handler=FileHandler):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.root, srv.log = Path(root) if root is not None else None, []
        srv.corrupt, srv.ignore_range, srv.truncations, srv.truncate_at = False, False, 0, 1000
        srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
