"""Typed errors: every error body is {"error": {"code", "message", "field"?}}.

Codes are stable and listed in the OpenAPI document, so catalog tooling can branch on them.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.blobs import StorageError
from service.store import STORE_OUTAGE_ERRORS

log = logging.getLogger("flatlay.api")

# code → (HTTP status, what it means)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "validation_error": (422, "a request field is missing or invalid; `field` names it"),
    "unknown_pipeline": (422, "the pipeline name is not one of the registered pipelines"),
    "empty_file": (422, "the uploaded file has no bytes"),
    "corrupt_image": (422, "the image data is damaged or truncated"),
    "image_too_small": (422, "the image is smaller than the minimum side"),
    "file_too_large": (413, "the upload exceeds the byte limit"),
    "payload_too_large": (413, "the request body is over the route's byte bound (by its "
                          "Content-Length, or by the bytes sent); refused before it is read"),
    "request_timeout": (408, "the request body arrived too slowly (FLATLAY_BODY_TIMEOUT_S, "
                        "FLATLAY_BODY_MIN_RATE)"),
    "image_too_many_pixels": (413, "the image exceeds the pixel limit (decompression bombs)"),
    "unsupported_media_type": (415, "not a JPEG, PNG or WebP image"),
    "unauthorized": (401, "no API key, or an unknown or revoked one"),
    "asset_not_found": (404, "no asset with this id"),
    "structure_not_found": (404, "no structure request with this id"),
    "invalid_structure": (422, "the structure is not a valid garment; `field` names the point"),
    "admin_required": (403, "the route needs a key of an admin tenant"),
    "unknown_output": (404, "the asset has no side output of this name; the message lists "
                       "those it has"),
    "asset_not_ready": (409, "the asset is still queued or running"),
    "asset_failed": (409, "the asset failed; its status holds the reason"),
    "asset_canceled": (409, "the asset was canceled"),
    "asset_not_cancelable": (409, "the asset already succeeded or failed"),
    "asset_expired": (410, "the retention period removed the asset's result"),
    "idempotency_key_reused": (
        409, "this Idempotency-Key was used with a different request body"
    ),
    "rate_limited": (429, "the API key's rate limit is reached; `Retry-After` says when to retry"),
    "rate_limiter_unavailable": (
        503, "the rate limiter (Redis) is unreachable and FLATLAY_RATE_LIMIT_ON_ERROR is deny; "
        "`Retry-After` says when to retry"
    ),
    "batch_not_found": (404, "no batch with this id"),
    "corrupt_archive": (422, "the archive is not a readable ZIP"),
    "invalid_manifest": (422, "the manifest is not a JSON list of items or a CSV with a header"),
    "batch_too_large": (413, "too many items or bytes in one batch"),
    "delivery_not_found": (404, "no webhook delivery with this id"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route exists but not with this method"),
    "service_unavailable": (503, "a dependency (job store, broker, blob store) is unreachable"),
    "storage_unavailable": (
        503, "the blob store failed a write or read (disk full, read-only, S3 error): a "
        "request is refused with `Retry-After` and keeps nothing; a job's attempt is retried, "
        "and after FLATLAY_MAX_ATTEMPTS the job fails with this code"
    ),
    "internal_error": (500, "an unexpected error; the request id is in the logs"),
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(
        self, code: str, message: str, field: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
        self.status = ERROR_CODES[code][0]


def error_response(
    code: str, message: str, field: str | None = None, headers: dict | None = None
) -> JSONResponse:
    detail: dict = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    return JSONResponse({"error": detail}, status_code=ERROR_CODES[code][0], headers=headers)


def error_responses(*codes: str) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the given codes, grouped by status."""
    if "rate_limited" in codes and "rate_limiter_unavailable" not in codes:
        # The limit's dependency answers both: routes list only the first.
        codes = (*codes, "rate_limiter_unavailable")
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERROR_CODES[code][0], []).append(code)
    return {
        status: {
            "model": ErrorBody,
            "description": "; ".join(f"`{c}`: {ERROR_CODES[c][1]}" for c in cs),
        }
        for status, cs in by_status.items()
    }


def _field_of(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            message = f"the field '{field}' is required"
        elif field:
            message = f"{field}: {message}"
        return error_response("validation_error", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return error_response("method_not_allowed", "this method is not allowed here")
        if exc.status_code == 404:
            return error_response("not_found", str(exc.detail or "not found"))
        detail = {"code": "http_error", "message": str(exc.detail)}
        return JSONResponse({"error": detail}, status_code=exc.status_code)

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        # The message names no server path; the cause is in the logs.
        log.warning("blob store failure: %s", exc)
        return error_response("storage_unavailable",
                              "the blob store failed (full, read-only or unreachable); "
                              "retry later",
                              headers={"Retry-After": "5"})

    async def _store_outage(_: Request, exc: Exception) -> JSONResponse:
        # The job store (PostgreSQL restarting, a dropped connection): nothing was recorded
        # and what the request stored is gone again (`deps.discard_stored`); retrying is safe.
        log.warning("job store unreachable: %s", type(exc).__name__)
        return error_response("service_unavailable",
                              "the job store is unreachable; nothing was kept, retry later",
                              headers={"Retry-After": "5"})

    for outage in STORE_OUTAGE_ERRORS:
        app.add_exception_handler(outage, _store_outage)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response("internal_error", f"unexpected {type(exc).__name__}")
