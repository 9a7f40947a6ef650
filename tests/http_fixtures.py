"""A real HTTP server on 127.0.0.1 for the tests: images to fetch (and hostile answers),
and a webhook receiver that records what it gets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class LocalHTTP:
    url: str
    files: dict[str, tuple[str, bytes]]  # path → (content type, body)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    # Status codes the receiver answers POSTs with, in turn (then 200).
    post_statuses: list[int] = field(default_factory=list)
    # The GETs it answered: (path, Host header).
    fetched: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def local_http(files: dict[str, tuple[str, bytes]], host: str = "127.0.0.1",
               port: int = 0) -> Iterator[LocalHTTP]:
    """The server on `host`:`port` (0: a free port); another loopback address such as
    127.0.0.2 stands for a private network the fetcher must not reach."""
    state = LocalHTTP(url="", files=files)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path
            state.fetched.append((path, self.headers.get("Host", "")))
            if path == "/redirect-loop":
                return self._answer(302, "", b"", location="/redirect-loop")
            if path == "/redirect-private":
                return self._answer(302, "", b"", location="http://169.254.169.254/latest")
            if path.startswith("/redirect-to?"):  # Location: the URL after the "?"
                return self._answer(302, "", b"", location=path.split("?", 1)[1])
            if path == "/redirect-ok":
                return self._answer(301, "", b"", location="/shirt.jpg")
            if path == "/slow":
                time.sleep(5)
            if path == "/endless":  # an image that never ends
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                try:
                    for _ in range(10_000):
                        self.wfile.write(b"\xff" * 65536)
                except OSError:
                    pass
                return None
            if path not in state.files:
                return self._answer(404, "text/plain", b"not here")
            content_type, body = state.files[path]
            return self._answer(200, content_type, body)

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.received.append((self.path, dict(self.headers), body))
            status = state.post_statuses.pop(0) if state.post_statuses else 200
            self._answer(status, "text/plain", b"ok")

        def _answer(self, status: int, content_type: str, body: bytes,
                    location: str | None = None) -> None:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    state.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
