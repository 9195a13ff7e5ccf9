"""A real HTTP server on 127.0.0.1, in a thread, serving generated files with scripted faults.

Each served path has a `Behaviour`: answer a fixed status, fail the first requests with 500,
drop the connection part-way through the body, flip a byte, ignore Range requests, send slowly,
require a bearer token, and publish a SHA-256 the way Hugging Face does (a 302 carrying
``X-Linked-ETag``/``X-Linked-Size`` to a CDN path, or a plain ``ETag``). Every request is logged
with its Range header, status and the body bytes actually sent.
"""

from __future__ import annotations

import hashlib
import io
import random
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

CDN_PREFIX = "/cdn"


def model_file(seed: int = 0, size: int = 200_000) -> bytes:
    """A small model file to serve: a torch.save pickle of `size` random bytes, as .pth files are
    (a verified file must also open as a checkpoint)."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.frombuffer(bytearray(random.Random(seed).randbytes(size)), dtype=torch.uint8)}, buffer)
    return buffer.getvalue()


_SEND_BLOCK = 16 * 1024


@dataclass
class Behaviour:
    data: bytes
    status: int | None = None
    """Answer every request with this status and no file (404, 401, 500...)."""
    fail_first: int = 0
    """Answer the first N requests with HTTP 500."""
    drop_after: int | None = None
    drops: int = 1
    """Close the connection after `drop_after` body bytes, on the first `drops` requests."""
    corrupt_times: int = 0
    """Flip one byte of the body in the first N responses."""
    honour_range: bool = True
    delay: float = 0.0
    """Seconds to sleep before each block of the body."""
    token: str | None = None
    hf: str | None = None
    """'redirect': 302 to the CDN path with X-Linked-ETag/Size; 'etag': the SHA-256 as the ETag."""
    published_sha256: str | None = None
    """The SHA-256 announced in hf mode (default: the real one)."""


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    bytes_sent: int = 0


class FixtureServer:
    def __init__(self):
        self.files: dict[str, Behaviour] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FixtureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, data: bytes, **behaviour) -> str:
        """Serve `data` at `path`; returns its URL."""
        self.files[path] = Behaviour(data, **behaviour)
        return self.base_url + path

    def requests_for(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path in (path, CDN_PREFIX + path)]

    def bytes_sent(self, path: str) -> int:
        return sum(r.bytes_sent for r in self.requests_for(path))

    def _log(self, request: Request) -> Request:
        with self._lock:
            self.requests.append(request)
        return request


def _handler_for(server: FixtureServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # `format`: the base class's name
            pass

        def do_GET(self):
            self._serve(body=True)

        def do_HEAD(self):
            self._serve(body=False)

        def _serve(self, body: bool):
            via_cdn = self.path.startswith(CDN_PREFIX + "/")
            path = self.path[len(CDN_PREFIX) :] if via_cdn else self.path
            behaviour = server.files.get(path)
            request = server._log(Request(self.command, self.path, self.headers.get("Range"), 0))
            if behaviour is None:
                return self._status(request, 404)
            with server._lock:
                seen = sum(1 for r in server.requests if r.path == self.path and r.method == self.command) - 1
            if behaviour.token is not None and self.headers.get("Authorization") != f"Bearer {behaviour.token}":
                return self._status(request, 401)
            if behaviour.status is not None:
                return self._status(request, behaviour.status)
            if seen < behaviour.fail_first:
                return self._status(request, 500)
            sha256 = behaviour.published_sha256 or hashlib.sha256(behaviour.data).hexdigest()
            if behaviour.hf == "redirect" and not via_cdn:
                return self._status(
                    request,
                    302,
                    {
                        "Location": CDN_PREFIX + path,
                        "X-Linked-ETag": f'"{sha256}"',
                        "X-Linked-Size": str(len(behaviour.data)),
                    },
                )
            data = behaviour.data
            if seen < behaviour.corrupt_times:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            if self.headers.get("Range") and behaviour.honour_range:
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data) > 0:
                return self._status(request, 416, {"Content-Range": f"bytes */{len(data)}"})
            request.status = 206 if start else 200
            self.send_response(request.status)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes" if behaviour.honour_range else "none")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if behaviour.hf == "etag":
                self.send_header("ETag", f'"{sha256}"')
            self.end_headers()
            if body:
                self._send_body(request, behaviour, data[start:], drop=seen < behaviour.drops)

        def _send_body(self, request: Request, behaviour: Behaviour, data: bytes, drop: bool):
            limit = behaviour.drop_after if drop and behaviour.drop_after is not None else None
            end = len(data) if limit is None else min(limit, len(data))
            try:
                for offset in range(0, end, _SEND_BLOCK):
                    if behaviour.delay:
                        time.sleep(behaviour.delay)
                    block = data[offset : min(offset + _SEND_BLOCK, end)]
                    self.wfile.write(block)
                    request.bytes_sent += len(block)
                self.wfile.flush()
            except OSError:
                self.close_connection = True
                return
            if end < len(data):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _status(self, request: Request, status: int, headers: dict[str, str] | None = None):
            request.status = status
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
