"""What routes inject (FastAPI `Depends`): the service context, the calling key, headers."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Response

from service.auth import Principal, current_key
from service.context import ServiceContext, get_context
from service.errors import ApiError
from service.ratelimit import RateLimiterUnavailable
from service.rows import Idempotency, IdempotencyConflict
from service.settings import Settings
from service.webhooks import webhook_target

log = logging.getLogger("flatlay.api")

Ctx = Annotated[ServiceContext, Depends(get_context)]
# Ids are at most this long; a longer one names nothing (and is not looked up).
MAX_ID_CHARS = 64
T = TypeVar("T")


def limited_key(ctx: Ctx, key: Annotated[Principal, Depends(current_key)]) -> Principal:
    """The caller, once it has a token left; 429 `rate_limited` otherwise, 503
    `rate_limiter_unavailable` when the limiter cannot tell and must not allow."""
    if ctx.limiter is not None:
        try:
            wait = ctx.limiter.take(key.bucket)
        except RateLimiterUnavailable as exc:
            raise ApiError(
                "rate_limiter_unavailable",
                # The cause (addresses included) goes to the log, not to the caller.
                f"the rate limiter is unreachable; retry in {exc.retry_after_s} s",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        if wait > 0:
            raise ApiError(
                "rate_limited",
                f"rate limit of {ctx.settings.rate_limit_per_s:g} requests/s (burst "
                f"{ctx.settings.rate_limit_burst}) reached; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    return key


# The caller, authenticated and within its rate limit.
Key = Annotated[Principal, Depends(limited_key)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255,
           description="the same key with the same request returns the same job; with "
           "another request, 409 `idempotency_key_reused`"),
]


def request_fingerprint(route: str, fields: dict, files: Iterable[bytes]) -> str:
    """SHA-256 of what a create request asks for: its route, fields and file contents."""
    digest = hashlib.sha256(json.dumps([route, fields], sort_keys=True, default=str).encode())
    for data in files:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def owned(find: Callable[..., T | None], item_id: str, key: Principal, code: str,
          what: str) -> T:
    """The caller's `what` with this id (`find(id, tenant_id=…)`), else 404 `code`: another
    tenant's is answered exactly like one that does not exist."""
    item = find(item_id, tenant_id=key.tenant_id) if len(item_id) <= MAX_ID_CHARS else None
    if item is None:
        raise ApiError(code, f"no {what} with id {item_id!r}")
    return item


def request_idempotency(header: str | None, route: str, fields: dict,
                        files: Iterable[bytes]) -> Idempotency | None:
    """The Idempotency-Key of a create request with its fingerprint; None without one
    (and `files`, which may be a generator, is then not read)."""
    if header is None:
        return None
    return Idempotency(header, request_fingerprint(route, fields, files))


def replayed_or_conflict(ctx: ServiceContext, key: Principal,
                         idem: Idempotency | None) -> str | None:
    """The id the same request made earlier under this key; 409 when the key came with
    another request; None when the key is new (or there is none)."""
    if idem is None:
        return None
    record = ctx.store.idempotency_record(key.tenant_id, idem.key)
    if record is None:
        return None
    if record.fingerprint != idem.fingerprint:
        raise ApiError(
            "idempotency_key_reused",
            f"Idempotency-Key {idem.key!r} was used with a different request "
            f"(it made {record.resource} {record.resource_id})",
            "Idempotency-Key",
        )
    return record.resource_id


def request_webhook_target(url: str | None, key: Principal, settings: Settings) -> str | None:
    """The URL a create request's events go to (its own, else its key's); 422 naming
    `webhook_url` when it cannot be used."""
    try:
        return webhook_target(url, key.webhook_url, key.key_id, settings)
    except ValueError as exc:
        raise ApiError("validation_error", str(exc), "webhook_url") from None


def discard_stored(ctx: ServiceContext, stored: list[str]) -> None:
    """Delete the input blobs a request put before its job rows, when the rows are not
    written (a twin won the race, the job store is down, the request failed): a blob no row
    names would be an orphan. Best effort: a blob store failing now too is logged, and what
    is left is an orphan the soak's accounting names."""
    for blob in stored:
        try:
            ctx.blobs.delete(blob)
        except Exception:  # noqa: BLE001 (the request's own error is the one to answer)
            log.warning("could not delete input blob %s of a refused request", blob)


def lost_race(ctx: ServiceContext, key: Principal, idem: Idempotency | None,
              conflict: IdempotencyConflict, stored: list[str]) -> str:
    """A twin request with the same Idempotency-Key stored first: delete the blobs this one
    put and answer as the twin did (the id it made; 409 when it asked for another thing)."""
    discard_stored(ctx, stored)
    replayed_or_conflict(ctx, key, idem)
    return conflict.existing.resource_id


def located(response: Response, path: str, replayed: bool = False) -> None:
    """The headers of a create request's answer: where the resource is, and whether an
    Idempotency-Key replayed an earlier answer."""
    response.headers["Location"] = path
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
