"""Typed errors of the client: each carries the service's stable error `code` (and `field`,
where the service names one), so catalog tooling can branch on the code, not on text.

The service answers every error as {"error": {"code", "message", "field"?}} (service/errors.py).
"""

from __future__ import annotations

from typing import Any


class FlatlayError(Exception):
    """Anything the client raises. `code` is the service's error code, or one of the
    client's own (`connection_failed`, `job_failed`, `wait_timeout`, `http_<status>`)."""

    def __init__(self, code: str, message: str, field: str | None = None,
                 status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (field {field})" if field else ""))
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        self.request_id = request_id


class ApiError(FlatlayError):
    """The service answered with an error body."""


class InvalidRequest(ApiError):
    """400, 408, 413, 415, 422: the request (a field, the file) is not acceptable."""


class Unauthorized(ApiError):
    """401, 403: no key, an unknown or revoked one, or a route it may not use."""


class NotFound(ApiError):
    """404, 410: no such asset, batch, output or route (or its result has expired)."""


class Conflict(ApiError):
    """409: not ready yet, failed, canceled, or an Idempotency-Key reused for another
    request."""


class RateLimited(ApiError):
    """429 after the client's retries ran out; `retry_after` is the server's last word."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    """5xx after the client's retries ran out (a dependency down, the blob store full)."""


class ConnectionFailed(FlatlayError):
    """The server could not be reached (refused, reset, timed out) within the retry time."""


class JobFailed(FlatlayError):
    """`wait` found the job failed or canceled; `code` is the job's own error code and
    `asset` its last status."""

    def __init__(self, asset: dict[str, Any]) -> None:
        error = asset.get("error") or {}
        code = error.get("code") or asset.get("status", "job_failed")
        super().__init__(code, error.get("message") or f"asset {asset.get('id')} "
                         f"{asset.get('status')}")
        self.asset = asset


class WaitTimeout(FlatlayError, TimeoutError):
    """`wait` gave up before the job finished (the job itself goes on)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest, 408: InvalidRequest, 413: InvalidRequest, 415: InvalidRequest,
    422: InvalidRequest, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 410: NotFound,
    409: Conflict, 429: RateLimited,
}


def error_from_response(status: int, body: Any, request_id: str | None = None,
                        retry_after: float | None = None) -> ApiError:
    """The typed error of an error answer; a body that is not the service's error shape
    (a proxy's HTML page) still gives an error, coded `http_<status>`."""
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("code"), str):
        code, message = detail["code"], str(detail.get("message") or "")
        field = detail.get("field") if isinstance(detail.get("field"), str) else None
    else:
        code, message, field = f"http_{status}", f"HTTP {status}", None
    cls = _BY_STATUS.get(status) or (ServiceUnavailable if status >= 500 else ApiError)
    kw: dict[str, Any] = {"retry_after": retry_after} if cls is RateLimited else {}
    return cls(code, message, field, status=status, request_id=request_id, **kw)
