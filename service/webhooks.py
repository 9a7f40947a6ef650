"""Signed webhooks (Standard Webhooks): `asset.succeeded`, `asset.failed`, `batch.completed`.

Each event for a URL is a delivery row (the job store is the truth); a Celery task on the
CPU queue makes each attempt, records it, and retries with exponential backoff. Signature:
`webhook-signature: v1,<base64 HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")>`
with the secret of the key that made the asset or batch (`whsec_<base64>`; the HMAC key is
the decoded part).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from service.fetch import AllowList, FetchError, check_public_url, pinned_send
from service.metrics import WEBHOOK_DELIVERIES
from service.rows import utcnow
from service.schemas import review_suggested
from service.settings import Settings
from service.store import JobStore

log = logging.getLogger("flatlay.webhooks")

EVENTS = ("asset.succeeded", "asset.failed", "batch.completed")
SendFn = Callable[[str], object]  # queue one attempt of a delivery, by id
# Failures that no later attempt can cure: the delivery ends at once instead of backing off.
FINAL_ERRORS = frozenset({"url_invalid", "url_refused", "webhook_unsigned"})


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does: recompute the signature and check the timestamp is recent."""
    h = {k.lower(): v for k, v in headers.items()}
    timestamp = int(h["webhook-timestamp"])
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, h["webhook-id"], timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in h["webhook-signature"].split())


def _secret(store: JobStore, settings: Settings, key_id: str | None) -> str | None:
    if key_id is None:
        return settings.local_webhook_secret or None
    key = store.get_api_key(key_id)
    return key.webhook_secret if key is not None else None


def backoff_s(settings: Settings, attempts: int) -> float:
    return min(settings.webhook_backoff_s * 2 ** (attempts - 1), 3600.0)


def webhook_target(url: str | None, key_url: str | None, key_id: str | None,
                   settings: Settings) -> str | None:
    """The URL a request's events go to (its own, else its key's default); ValueError when
    it is not an http(s) URL, is a literal private address, or nothing could sign its
    events."""
    url = url or key_url
    if not url:
        return None
    try:
        check_public_url(url, AllowList.parse(settings.fetch_allow_hosts))
    except FetchError as exc:
        raise ValueError(exc.message) from None
    if key_id is None and not settings.local_webhook_secret:
        raise ValueError("webhooks are signed with the API key's secret: send one, or set "
                         "FLATLAY_LOCAL_WEBHOOK_SECRET when authentication is off")
    return url


def _event(store: JobStore, send: SendFn, *, tenant_id: str, key_id: str | None, url: str,
           event: str, data: dict[str, Any], asset_id: str | None = None,
           batch_id: str | None = None) -> None:
    payload = {"type": event, "timestamp": utcnow().isoformat(), "data": data}
    delivery = store.add_delivery(
        delivery_id=f"msg_{uuid.uuid4().hex}", tenant_id=tenant_id, key_id=key_id, event=event,
        url=url, payload=payload, asset_id=asset_id, batch_id=batch_id,
    )
    send(delivery.id)


def job_ended(store: JobStore, send: SendFn, job_id: str, review_below: float) -> None:
    """After a job ended: its asset event, and `batch.completed` if it was its batch's last.
    `review_below`: Settings.review_confidence, for the event's `review_suggested`."""
    job = store.get(job_id)
    if job is None:
        return
    if job.webhook_url and job.status in ("succeeded", "failed"):
        error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
        _event(store, send, tenant_id=job.tenant_id, key_id=job.key_id, url=job.webhook_url,
               event=f"asset.{job.status}", asset_id=job.id, batch_id=job.batch_id,
               data={"id": job.id, "status": job.status, "sku": job.sku,
                     "batch_id": job.batch_id, "error": error,
                     "compliance": job.compliance if job.status == "succeeded" else None,
                     "attributes": job.attributes if job.status == "succeeded" else None,
                     "review_suggested": (review_suggested(job.attributes, review_below)
                                          if job.status == "succeeded" else None),
                     "links": {"self": f"/assets/{job.id}",
                               "result": f"/assets/{job.id}/result"}})
    if job.batch_id is not None:
        complete_batch(store, send, job.batch_id)


def complete_batch(store: JobStore, send: SendFn, batch_id: str) -> bool:
    """Mark the batch completed if none of its jobs is active; the one caller that does
    sends `batch.completed`."""
    if not store.complete_batch_if_done(batch_id):
        return False
    batch = store.get_batch(batch_id)
    if batch is not None and batch.webhook_url:
        counts: dict[str, int] = {"rejected": len(batch.rejected)}
        for job in store.batch_jobs(batch_id):
            counts[job.status] = counts.get(job.status, 0) + 1
        _event(store, send, tenant_id=batch.tenant_id, key_id=batch.key_id,
               url=batch.webhook_url, event="batch.completed", batch_id=batch_id,
               data={"id": batch_id, "counts": counts,
                     "links": {"self": f"/batches/{batch_id}",
                               "results": f"/batches/{batch_id}/results"}})
    return True


def attempt_delivery(store: JobStore, settings: Settings, delivery_id: str) -> float | None:
    """One attempt. Returns seconds until the next attempt, or None when there is none
    (delivered, out of attempts, or not pending)."""
    delivery = store.get_delivery(delivery_id)
    if delivery is None or delivery.status != "pending":
        return None
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    attempt: dict[str, Any] = {"at": utcnow().isoformat(), "status_code": None, "error": None}
    start = time.perf_counter()
    secret = _secret(store, settings, delivery.key_id)
    final = False
    try:
        if secret is None:
            raise FetchError("webhook_unsigned", "no signing secret: the key was removed")
        headers = {"content-type": "application/json", "user-agent": "flatlay-webhooks",
                   "webhook-id": delivery.id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, delivery.id, timestamp, body)}
        # Redirects are not followed (a 3xx is a failed attempt); the one connection goes to
        # the address that was checked.
        with httpx.Client(timeout=settings.fetch_timeout_s, follow_redirects=False,
                          trust_env=False) as http:
            response = pinned_send(http, "POST", delivery.url,
                                   AllowList.parse(settings.fetch_allow_hosts),
                                   headers=headers, content=body)
        attempt["status_code"] = response.status_code
        ok = 200 <= response.status_code < 300
        if not ok:
            attempt["error"] = f"the receiver answered {response.status_code}"
    except FetchError as exc:
        ok, attempt["error"] = False, f"{exc.code}: {exc.message}"
        final = exc.code in FINAL_ERRORS
    except httpx.HTTPError as exc:
        ok, attempt["error"] = False, f"{type(exc).__name__}: {exc}"[:500]
    attempt["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
    made = len(delivery.attempts) + 1
    if ok:
        outcome, wait = "succeeded", None
    elif final or made >= settings.webhook_max_attempts:
        outcome, wait = "failed", None
    else:
        outcome, wait = "pending", backoff_s(settings, made)
    next_at = utcnow() + dt.timedelta(seconds=wait) if wait is not None else None
    store.record_attempt(delivery.id, attempt, outcome, next_at)
    WEBHOOK_DELIVERIES.labels(delivery.event,
                              "retry" if outcome == "pending" else outcome).inc()
    log.info("webhook %s %s attempt %d: %s", delivery.event, delivery.id, made, outcome,
             extra={"status_code": attempt["status_code"], "error": attempt["error"]})
    return wait
