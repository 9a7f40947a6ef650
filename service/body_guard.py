"""Request bodies at the edge: refuse one over its route's bound, cut off one that trickles.

A pure ASGI middleware that wraps `receive` and counts, so nothing is buffered to decide:
- `Content-Length` over the bound: 413 `payload_too_large` before one body byte is read
  (uvicorn sends `100 Continue` only once the app first receives, so a client that asked for
  it never sends the body at all);
- a body without `Content-Length` (chunked): 413 as soon as the bytes received pass the bound;
- a body still incomplete `body_timeout_s` plus one second per `body_min_rate` bytes received
  after the request began: 408 `request_timeout` (slowloris), a rate any real upload beats.
Both answers carry `Connection: close`, so uvicorn drops the connection instead of reading and
discarding the rest of the body to reuse it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.settings import Settings

# Room for the multipart envelope and the form fields beside the file(s): Starlette caps one
# non-file field at 1 MiB, this caps them together.
FORM_ALLOWANCE = 1024 * 1024


def body_bound(settings: Settings) -> Callable[[Scope], int]:
    """The byte bound of a request's body, by route: uploads follow the ingest limits."""
    bounds = {
        ("POST", "/assets"): settings.max_upload_bytes + FORM_ALLOWANCE,
        # One batch route takes files, a ZIP or a manifest: the largest of them bounds it and
        # the route checks a manifest against its own, smaller limit once it is spooled.
        ("POST", "/batches"): max(settings.max_batch_bytes, settings.max_manifest_bytes)
        + FORM_ALLOWANCE,
    }

    def bound(scope: Scope) -> int:
        return bounds.get((scope["method"], scope["path"].rstrip("/") or "/"),
                          settings.max_json_bytes)

    return bound


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn's parser refuses these before we are called
    return None


class _Refused(Exception):
    """Raised from `receive` to unwind the app when the body is refused."""


@dataclass
class _Refusal:
    code: str
    message: str


class BodyGuard:
    def __init__(self, app: ASGIApp, bound: Callable[[Scope], int], timeout_s: float,
                 min_rate: float) -> None:
        self.app = app
        self.bound = bound
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.bound(scope)
        length = _content_length(scope)
        if length is not None and length > limit:
            await _answer(scope, send,
                          _Refusal("payload_too_large", _too_large(length, limit, True)))
            return

        start = time.monotonic()
        received = 0
        complete = False
        refusal: _Refusal | None = None
        started = False  # the app's response began (ours can no longer be sent)
        replaced = False  # the app answered our refusal its own way; ours went instead

        async def guarded_receive() -> Message:
            nonlocal received, complete, refusal
            if complete:
                # Past the body, receive only waits for a disconnect (streamed responses).
                return await receive()
            remaining = start + self.timeout_s + received / self.min_rate - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                refusal = _Refusal("request_timeout", f"the request body did not arrive "
                                   f"within {time.monotonic() - start:.0f} s ({received} "
                                   f"bytes received; at least {self.min_rate:g} bytes/s "
                                   f"after the first {self.timeout_s:g} s)")
                raise _Refused from None
            if message["type"] != "http.request":
                complete = True
                return message
            received += len(message.get("body", b""))
            if received > limit:
                refusal = _Refusal("payload_too_large", _too_large(received, limit, False))
                raise _Refused
            complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start" and refusal is not None and not started:
                # FastAPI turns any error while parsing a body into its own 400: say why.
                replaced = True
                await _answer(scope, send, refusal)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if refusal is None or started:
                raise
            if not replaced:
                await _answer(scope, send, refusal)


def _too_large(size: int, limit: int, declared: bool) -> str:
    how = f"Content-Length is {size} bytes" if declared else f"more than {limit} bytes were sent"
    return f"the request body is over this route's bound of {limit} bytes ({how})"


async def _answer(scope: Scope, send: Send, refusal: _Refusal) -> None:
    response = error_response(refusal.code, refusal.message, headers={"Connection": "close"})

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)
