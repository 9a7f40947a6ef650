"""HTTP/1.1 over a raw socket, for what httpx will not do: send headers and hold the body,
trickle it, or stop sending the moment the server answers (as curl does with `Expect`)."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False  # the server closed the connection after answering
    lines: list[str] = field(default_factory=list)

    def json(self) -> dict:
        return json.loads(self.body)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in
                                                             headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send_until_answered(sock: socket.socket, chunks: Iterable[bytes],
                        pause_s: float = 0.0) -> tuple[int, bool]:
    """Send chunks until the server has something to say; (bytes sent, server hung up)."""
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], pause_s)[0]:
            return sent, False
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return sent, True
        sent += len(chunk)
    return sent, False


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    """One response (Content-Length framed), then whether the server closed the connection."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    closed = False
    try:
        sock.settimeout(2.0)
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    return RawResponse(int(status_line.split()[1]), headers, body[:length], closed=closed,
                       lines=[status_line, *header_lines])


def chunked(parts: Iterable[bytes]) -> Iterable[bytes]:
    """Transfer-Encoding: chunked framing of parts (without the final empty chunk)."""
    for part in parts:
        yield b"%x\r\n%s\r\n" % (len(part), part)

