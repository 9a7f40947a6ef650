"""The job store's rows: one table per record the service keeps, and the frozen views of
them that the rest of the service reads (detached snapshots, safe after the session closed).

The queries are service.store (jobs, workers) and service.store_queries (API keys, batches,
webhook deliveries); the schema's history is the Alembic migrations in `service/migrations`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled"})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_blob: Mapped[str] = mapped_column(String(255))
    input_meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    result_blob: Mapped[str | None] = mapped_column(String(255))
    result_content_type: Mapped[str | None] = mapped_column(String(64))
    # Side outputs of the attempt that succeeded: name → blob key (models.pipeline.SIDE_OUTPUTS).
    side_outputs: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # The delivered image checked against its preset (models.presets.check_compliance).
    compliance: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Catalog attributes of the result (models.attributes.garment_attributes).
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stage: Mapped[str | None] = mapped_column(String(32))
    percent: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    # Set when the retention period removed the job's blobs.
    expired_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Jobs of a batch: the batch and the item's SKU.
    batch_id: Mapped[str | None] = mapped_column(String(32), index=True)
    sku: Mapped[str | None] = mapped_column(String(255))
    # Where its events go, and the key whose secret signs them (None: auth off).
    webhook_url: Mapped[str | None] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(32))


class BatchRow(Base):
    """A batch: its accepted items are jobs (jobs.batch_id); rejected members stay here."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))  # files | archive | manifest
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    # [{"name", "sku", "code", "message"}] for members refused at submission.
    rejected: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDeliveryRow(Base):
    """One event for one URL, and every attempt to deliver it."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the `webhook-id`
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    asset_id: Mapped[str | None] = mapped_column(String(32))
    batch_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending|succeeded|failed
    # [{"at", "status_code", "error", "duration_ms"}]
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class DeliveryView:
    id: str
    tenant_id: str
    key_id: str | None
    event: str
    url: str
    payload: dict[str, Any]
    asset_id: str | None
    batch_id: str | None
    status: str
    attempts: list[dict[str, Any]]
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, row: WebhookDeliveryRow) -> DeliveryView:
        values = {f: getattr(row, f) for f in cls.__dataclass_fields__}
        for f in ("next_attempt_at", "created_at", "finished_at"):
            values[f] = aware(values[f])
        values["attempts"] = list(values["attempts"])
        return cls(**values)


@dataclass(frozen=True)
class BatchView:
    id: str
    tenant_id: str
    source: str
    options: dict[str, Any]
    rejected: list[dict[str, Any]]
    webhook_url: str | None
    key_id: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None

    @classmethod
    def of(cls, row: BatchRow) -> BatchView:
        return cls(id=row.id, tenant_id=row.tenant_id, source=row.source, options=row.options,
                   rejected=list(row.rejected), webhook_url=row.webhook_url, key_id=row.key_id,
                   created_at=aware(row.created_at),  # type: ignore[arg-type]
                   completed_at=aware(row.completed_at))


class IdempotencyRow(Base):
    """An `Idempotency-Key` seen from a tenant: the request it came with and what it made."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the request
    resource: Mapped[str] = mapped_column(String(16))  # "asset" | "batch"
    resource_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Idempotency:
    key: str
    fingerprint: str


class IdempotencyConflict(Exception):
    """Another request took this idempotency key first; `existing` is what it made."""

    def __init__(self, existing: IdempotencyRecord) -> None:
        super().__init__(existing.key)
        self.existing = existing


@dataclass(frozen=True)
class IdempotencyRecord:
    key: str
    fingerprint: str
    resource: str
    resource_id: str


class WorkerRow(Base):
    """One worker process that can take jobs; it refreshes `last_seen_at` as its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # "host:pid"
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    pipelines: Mapped[list[str]] = mapped_column(JSON)
    current_job: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class ApiKeyRow(Base):
    """An API key: only its SHA-256 is stored; `prefix` is the visible start of the key."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Signs this key's webhooks (Standard Webhooks "whsec_…"); the service must keep it.
    webhook_secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class ApiKeyView:
    id: str
    prefix: str
    tenant_id: str
    name: str | None
    webhook_url: str | None
    webhook_secret: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, row: ApiKeyRow) -> ApiKeyView:
        return cls(id=row.id, prefix=row.prefix, tenant_id=row.tenant_id, name=row.name,
                   webhook_url=row.webhook_url, webhook_secret=row.webhook_secret,
                   created_at=aware(row.created_at),  # type: ignore[arg-type]
                   revoked_at=aware(row.revoked_at))


@dataclass(frozen=True)
class WorkerView:
    name: str
    hostname: str
    pid: int
    pipelines: list[str]
    current_job: str | None
    started_at: dt.datetime
    last_seen_at: dt.datetime


@dataclass(frozen=True)
class JobView:
    """A detached snapshot of a job row (safe to use after the session closed)."""

    id: str
    tenant_id: str
    status: str
    pipeline: str
    options: dict[str, Any]
    input_blob: str
    input_meta: dict[str, Any]
    result_blob: str | None
    result_content_type: str | None
    side_outputs: dict[str, str] | None
    compliance: dict[str, Any] | None
    attributes: dict[str, Any] | None
    stage: str | None
    percent: int
    timings: dict[str, float]
    error_code: str | None
    error_message: str | None
    attempts: int
    worker: str | None
    created_at: dt.datetime
    enqueued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    expired_at: dt.datetime | None
    batch_id: str | None
    sku: str | None
    webhook_url: str | None
    key_id: str | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(**{f: getattr(job, f) for f in cls.__dataclass_fields__})


def aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def new_job_row(
    *, job_id: str, tenant_id: str, pipeline: str, options: dict[str, Any], input_blob: str,
    input_meta: dict[str, Any], batch_id: str | None = None, sku: str | None = None,
    webhook_url: str | None = None, key_id: str | None = None,
) -> Job:
    """A queued job, not yet stored."""
    now = utcnow()
    return Job(id=job_id, tenant_id=tenant_id, status="queued", pipeline=pipeline,
               options=options, input_blob=input_blob, input_meta=input_meta, percent=0,
               timings={}, attempts=0, created_at=now, updated_at=now, batch_id=batch_id,
               sku=sku, webhook_url=webhook_url, key_id=key_id)


def normalise(view: JobView) -> JobView:
    fields = ("created_at", "enqueued_at", "started_at", "finished_at", "updated_at",
              "expired_at")
    return JobView(**{**view.__dict__, **{f: aware(getattr(view, f)) for f in fields}})
