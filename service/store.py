"""The job store: one row per asset job, the source of truth for its state.

SQLAlchemy 2.x; SQLite in embedded mode, PostgreSQL by URL. The schema is managed by the
Alembic migrations in `service/migrations`; `migrate()` brings a database to head.
State changes are conditional UPDATEs, so a duplicated delivery of the same job id (broker
redelivery, reconciler) can never run a job twice at once or resurrect a finished one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

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
            values[f] = _aware(values[f])
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
                   created_at=_aware(row.created_at),  # type: ignore[arg-type]
                   completed_at=_aware(row.completed_at))


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
                   created_at=_aware(row.created_at),  # type: ignore[arg-type]
                   revoked_at=_aware(row.revoked_at))


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


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def new_job_id() -> str:
    return uuid.uuid4().hex


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


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            # WAL lets the API read while a worker writes; busy_timeout waits out short locks.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True)


def _alembic_config(database_url: str):  # noqa: ANN202 (alembic is imported lazily)
    from alembic.config import Config

    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["database_url"] = database_url
    return cfg


def migrate(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at `database_url` to `revision` with Alembic."""
    from alembic import command

    cfg = _alembic_config(database_url)
    if not database_url.startswith("sqlite:///"):
        command.upgrade(cfg, revision)  # PostgreSQL: an advisory lock in migrations/env.py
        return
    # API and worker migrate at start-up; on SQLite they take turns under a file lock.
    import fcntl

    lock = Path(database_url.removeprefix("sqlite:///") + ".migrate-lock")
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        command.upgrade(cfg, revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the database at `database_url` to `revision` ("base" drops everything)."""
    from alembic import command

    command.downgrade(_alembic_config(database_url), revision)


class JobStore:
    """Job rows: create, read, and the conditional state transitions of a job's life."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        return self._sessions()

    # Creation and reads ----------------------------------------------------------------------

    def create_job(
        self,
        *,
        job_id: str,
        tenant_id: str = "local",
        pipeline: str,
        options: dict[str, Any],
        input_blob: str,
        input_meta: dict[str, Any],
        idempotency: Idempotency | None = None,
        webhook_url: str | None = None,
        key_id: str | None = None,
    ) -> JobView:
        """Insert a queued job; with `idempotency`, record its key in the same transaction
        (IdempotencyConflict, and no job, when another request holds that key)."""
        job = new_job_row(job_id=job_id, tenant_id=tenant_id, pipeline=pipeline,
                          options=options, input_blob=input_blob, input_meta=input_meta,
                          webhook_url=webhook_url, key_id=key_id)
        self._insert_with_idempotency([job], tenant_id, idempotency, "asset", job_id)
        return self.get(job_id)  # type: ignore[return-value]

    def create_batch(
        self, *, batch_id: str, tenant_id: str, source: str, options: dict[str, Any],
        rejected: list[dict[str, Any]], webhook_url: str | None, jobs: list[Job],
        idempotency: Idempotency | None = None, key_id: str | None = None,
    ) -> BatchView:
        """The batch and all its jobs in one transaction (none are lost half-way)."""
        batch = BatchRow(id=batch_id, tenant_id=tenant_id, source=source, options=options,
                         rejected=rejected, webhook_url=webhook_url, key_id=key_id,
                         created_at=utcnow(),
                         completed_at=None if jobs else utcnow())
        self._insert_with_idempotency([batch, *jobs], tenant_id, idempotency, "batch",
                                      batch_id)
        return self.get_batch(batch_id)  # type: ignore[return-value]

    def get_batch(self, batch_id: str, tenant_id: str | None = None) -> BatchView | None:
        with self._session() as s:
            row = s.get(BatchRow, batch_id)
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                return None
            return BatchView.of(row)

    def batch_jobs(self, batch_id: str) -> list[JobView]:
        with self._session() as s:
            rows = s.scalars(select(Job).where(Job.batch_id == batch_id)
                             .order_by(Job.created_at, Job.id)).all()
            return [_normalise(JobView.of(j)) for j in rows]

    def complete_batch_if_done(self, batch_id: str) -> bool:
        """Mark the batch completed once none of its jobs is queued or running; True only
        for the one caller that completed it (it sends `batch.completed`)."""
        active = select(Job.id).where(Job.batch_id == batch_id,
                                      Job.status.in_(("queued", "running"))).exists()
        with self._session() as s, s.begin():
            return s.execute(
                update(BatchRow).where(BatchRow.id == batch_id, BatchRow.completed_at.is_(None),
                                       ~active).values(completed_at=utcnow())
            ).rowcount == 1

    def open_batches(self, limit: int = 500) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(BatchRow.id).where(BatchRow.completed_at.is_(None))
                                  .limit(limit)).all())

    def set_input(self, job_id: str, input_meta: dict[str, Any]) -> None:
        """Record what a fetched input turned out to be."""
        self._update(job_id, input_meta=input_meta)

    def _insert_with_idempotency(
        self, rows: list[Base], tenant_id: str, idempotency: Idempotency | None,
        resource: str, resource_id: str,
    ) -> None:
        try:
            with self._session() as s, s.begin():
                if idempotency is not None:
                    # First, so that a concurrent twin fails before it writes anything.
                    s.add(IdempotencyRow(tenant_id=tenant_id, key=idempotency.key,
                                         fingerprint=idempotency.fingerprint,
                                         resource=resource, resource_id=resource_id,
                                         created_at=utcnow()))
                    s.flush()
                s.add_all(rows)
        except IntegrityError:
            existing = (self.idempotency_record(tenant_id, idempotency.key)
                        if idempotency is not None else None)
            if existing is None:
                raise
            raise IdempotencyConflict(existing) from None

    def idempotency_record(self, tenant_id: str, key: str) -> IdempotencyRecord | None:
        with self._session() as s:
            row = s.get(IdempotencyRow, (tenant_id, key))
            if row is None:
                return None
            return IdempotencyRecord(key=row.key, fingerprint=row.fingerprint,
                                     resource=row.resource, resource_id=row.resource_id)

    def get(self, job_id: str, tenant_id: str | None = None) -> JobView | None:
        """The job, or None; with `tenant_id`, None also when it belongs to another tenant."""
        with self._session() as s:
            job = s.get(Job, job_id)
            if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
                return None
            view = JobView.of(job)
        return _normalise(view)

    def count_by_status(self) -> dict[str, int]:
        with self._session() as s:
            rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    # Transitions -----------------------------------------------------------------------------

    def _update(self, job_id: str, *conditions: Any, **values: Any) -> bool:
        values.setdefault("updated_at", utcnow())
        with self._session() as s, s.begin():
            result = s.execute(update(Job).where(Job.id == job_id, *conditions).values(**values))
        return result.rowcount == 1

    def mark_enqueued(self, job_id: str) -> None:
        self._update(job_id, Job.status == "queued", enqueued_at=utcnow())

    def claim(self, job_id: str, worker: str) -> JobView | None:
        """queued → running for exactly one taker; None when the job is not there to take."""
        taken = self._update(
            job_id,
            Job.status == "queued",
            status="running",
            worker=worker,
            attempts=Job.attempts + 1,
            started_at=utcnow(),
            stage="starting",
            percent=0,
            error_code=None,
            error_message=None,
        )
        return self.get(job_id) if taken else None

    @staticmethod
    def _held_by(worker: str | None) -> tuple:
        # A worker presumed dead whose job went to another worker must not record anything.
        return (Job.worker == worker,) if worker is not None else ()

    def set_progress(
        self, job_id: str, stage: str, percent: int, worker: str | None = None
    ) -> None:
        self._update(job_id, Job.status == "running", *self._held_by(worker), stage=stage,
                     percent=int(percent))

    def succeed(
        self, job_id: str, *, result_blob: str, content_type: str, timings: dict[str, float],
        worker: str | None = None, side_outputs: dict[str, str] | None = None,
        compliance: dict[str, Any] | None = None,
    ) -> bool:
        """running → succeeded with the result, its side outputs (name → blob key) and its
        compliance check; False when the job is no longer this worker's to finish."""
        return self._update(
            job_id,
            Job.status == "running",
            *self._held_by(worker),
            status="succeeded",
            result_blob=result_blob,
            result_content_type=content_type,
            side_outputs=side_outputs or {},
            compliance=compliance,
            timings=timings,
            stage="done",
            percent=100,
            finished_at=utcnow(),
        )

    def fail(
        self,
        job_id: str,
        *,
        code: str,
        message: str,
        timings: dict[str, float] | None = None,
        from_states: tuple[str, ...] = ("running",),
        worker: str | None = None,
    ) -> bool:
        values: dict[str, Any] = {
            "status": "failed",
            "error_code": code,
            "error_message": message[:2000],
            "finished_at": utcnow(),
        }
        if timings is not None:
            values["timings"] = timings
        return self._update(job_id, Job.status.in_(from_states), *self._held_by(worker),
                            **values)

    def cancel(self, job_id: str) -> bool:
        return self._update(
            job_id, Job.status.in_(("queued", "running")), status="canceled", finished_at=utcnow()
        )

    def delete_job(self, job_id: str) -> bool:
        """Remove the row (its blobs are the caller's to delete). A worker still running it
        finds nothing to record its result in, and drops the result."""
        with self._session() as s, s.begin():
            return s.execute(delete(Job).where(Job.id == job_id)).rowcount == 1

    # Retention -------------------------------------------------------------------------------

    def expirable(self, older_than_s: float, limit: int = 500) -> list[JobView]:
        """Finished jobs past the retention period whose blobs are still there."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        with self._session() as s:
            rows = s.scalars(
                select(Job).where(Job.status.in_(TERMINAL_STATES), Job.finished_at < cutoff,
                                  Job.expired_at.is_(None)).limit(limit)
            ).all()
            return [_normalise(JobView.of(j)) for j in rows]

    def mark_expired(self, job_id: str) -> None:
        self._update(job_id, Job.expired_at.is_(None), expired_at=utcnow(), result_blob=None)

    # API keys ----------------------------------------------------------------------------------

    def create_api_key(
        self, *, key_id: str, prefix: str, key_hash: str, tenant_id: str, name: str | None,
        webhook_url: str | None, webhook_secret: str,
    ) -> ApiKeyView:
        row = ApiKeyRow(id=key_id, prefix=prefix, key_hash=key_hash, tenant_id=tenant_id,
                        name=name, webhook_url=webhook_url, webhook_secret=webhook_secret,
                        created_at=utcnow())
        with self._session() as s, s.begin():
            s.add(row)
        return ApiKeyView.of(row)

    def api_key_by_hash(self, key_hash: str) -> ApiKeyView | None:
        """The key with this hash while it is not revoked."""
        with self._session() as s:
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash,
                                                    ApiKeyRow.revoked_at.is_(None))).first()
            return ApiKeyView.of(row) if row is not None else None

    def get_api_key(self, key_id: str) -> ApiKeyView | None:
        with self._session() as s:
            row = s.get(ApiKeyRow, key_id)
            return ApiKeyView.of(row) if row is not None else None

    def list_api_keys(self, tenant_id: str | None = None) -> list[ApiKeyView]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        with self._session() as s:
            return [ApiKeyView.of(r) for r in s.scalars(query).all()]

    def revoke_api_key(self, key_id_or_prefix: str) -> ApiKeyView | None:
        """Revoke the key with this id or visible prefix; None when no live key matches."""
        with self._session() as s, s.begin():
            rows = s.scalars(select(ApiKeyRow).where(
                (ApiKeyRow.id == key_id_or_prefix) | (ApiKeyRow.prefix == key_id_or_prefix),
                ApiKeyRow.revoked_at.is_(None),
            )).all()
            if len(rows) != 1:
                return None
            rows[0].revoked_at = utcnow()
            return ApiKeyView.of(rows[0])

    # Webhook deliveries ----------------------------------------------------------------------

    def add_delivery(
        self, *, delivery_id: str, tenant_id: str, key_id: str | None, event: str, url: str,
        payload: dict[str, Any], asset_id: str | None = None, batch_id: str | None = None,
    ) -> DeliveryView:
        row = WebhookDeliveryRow(id=delivery_id, tenant_id=tenant_id, key_id=key_id,
                                 event=event, url=url, payload=payload, asset_id=asset_id,
                                 batch_id=batch_id, status="pending", attempts=[],
                                 next_attempt_at=utcnow(), created_at=utcnow())
        with self._session() as s, s.begin():
            s.add(row)
        return DeliveryView.of(row)

    def get_delivery(self, delivery_id: str, tenant_id: str | None = None) -> DeliveryView | None:
        with self._session() as s:
            row = s.get(WebhookDeliveryRow, delivery_id)
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                return None
            return DeliveryView.of(row)

    def list_deliveries(
        self, tenant_id: str, asset_id: str | None = None, batch_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryView]:
        query = select(WebhookDeliveryRow).where(WebhookDeliveryRow.tenant_id == tenant_id)
        if asset_id is not None:
            query = query.where(WebhookDeliveryRow.asset_id == asset_id)
        if batch_id is not None:
            query = query.where(WebhookDeliveryRow.batch_id == batch_id)
        query = query.order_by(WebhookDeliveryRow.created_at.desc()).limit(limit)
        with self._session() as s:
            return [DeliveryView.of(r) for r in s.scalars(query).all()]

    def record_attempt(
        self, delivery_id: str, attempt: dict[str, Any], status: str,
        next_attempt_at: dt.datetime | None,
    ) -> None:
        """Append an attempt; status pending (retry at next_attempt_at), succeeded or failed."""
        with self._session() as s, s.begin():
            row = s.get(WebhookDeliveryRow, delivery_id, with_for_update=True)
            if row is None or row.status != "pending":
                return
            row.attempts = [*row.attempts, attempt]
            row.status = status
            row.next_attempt_at = next_attempt_at
            if status != "pending":
                row.finished_at = utcnow()

    def overdue_deliveries(self, late_by_s: float, limit: int = 500) -> list[str]:
        """Pending deliveries whose retry is long overdue (its message was lost)."""
        cutoff = utcnow() - dt.timedelta(seconds=late_by_s)
        with self._session() as s:
            return list(s.scalars(
                select(WebhookDeliveryRow.id).where(WebhookDeliveryRow.status == "pending",
                                                    WebhookDeliveryRow.next_attempt_at < cutoff)
                .limit(limit)).all())

    def touch_delivery(self, delivery_id: str) -> None:
        with self._session() as s, s.begin():
            s.execute(update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id)
                      .values(next_attempt_at=utcnow()))

    # Worker heartbeats -----------------------------------------------------------------------

    def heartbeat(
        self, name: str, *, hostname: str, pid: int, pipelines: list[str],
        current_job: str | None,
    ) -> None:
        """Record that worker `name` is alive now (insert on its first beat)."""
        now = utcnow()
        with self._session() as s, s.begin():
            updated = s.execute(
                update(WorkerRow).where(WorkerRow.name == name)
                .values(last_seen_at=now, current_job=current_job, pipelines=pipelines)
            ).rowcount
            if not updated:
                s.add(WorkerRow(name=name, hostname=hostname, pid=pid, pipelines=pipelines,
                                current_job=current_job, started_at=now, last_seen_at=now))

    def forget_worker(self, name: str) -> None:
        with self._session() as s, s.begin():
            s.execute(delete(WorkerRow).where(WorkerRow.name == name))

    def live_workers(self, within_s: float) -> list[WorkerView]:
        """Workers whose last heartbeat is younger than `within_s` seconds, by name."""
        cutoff = utcnow() - dt.timedelta(seconds=within_s)
        with self._session() as s:
            rows = s.scalars(
                select(WorkerRow).where(WorkerRow.last_seen_at >= cutoff).order_by(WorkerRow.name)
            ).all()
            return [
                WorkerView(
                    name=r.name, hostname=r.hostname, pid=r.pid, pipelines=list(r.pipelines),
                    current_job=r.current_job, started_at=_aware(r.started_at),  # type: ignore[arg-type]
                    last_seen_at=_aware(r.last_seen_at),  # type: ignore[arg-type]
                )
                for r in rows
            ]

    def prune_workers(self, older_than_s: float) -> int:
        """Delete the records of workers silent for `older_than_s` (killed, never said bye)."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        with self._session() as s, s.begin():
            return s.execute(delete(WorkerRow).where(WorkerRow.last_seen_at < cutoff)).rowcount

    # Reconciliation --------------------------------------------------------------------------

    def stale_queued(self, older_than_s: float, limit: int = 500) -> list[str]:
        """Queued jobs whose last enqueue (or creation) is older than `older_than_s`."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        last_sent = func.coalesce(Job.enqueued_at, Job.created_at)
        with self._session() as s:
            rows = s.execute(
                select(Job.id)
                .where(Job.status == "queued", last_sent < cutoff)
                .order_by(Job.created_at)
                .limit(limit)
            ).all()
        return [r[0] for r in rows]

    def stale_running(self, older_than_s: float, limit: int = 500) -> list[str]:
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        with self._session() as s:
            rows = s.execute(
                select(Job.id).where(Job.status == "running", Job.started_at < cutoff).limit(limit)
            ).all()
        return [r[0] for r in rows]

    def orphaned_running(self, silent_for_s: float, limit: int = 500) -> list[str]:
        """Running jobs whose worker has sent no heartbeat for `silent_for_s` (killed: its
        record stays but stops being refreshed), started at least that long ago."""
        cutoff = utcnow() - dt.timedelta(seconds=silent_for_s)
        live = select(WorkerRow.name).where(WorkerRow.last_seen_at >= cutoff)
        with self._session() as s:
            rows = s.execute(
                select(Job.id).where(
                    Job.status == "running", Job.started_at < cutoff,
                    or_(Job.worker.is_(None), Job.worker.not_in(live)),
                ).limit(limit)
            ).all()
        return [r[0] for r in rows]

    def release(self, job_id: str, max_attempts: int) -> str:
        """A running job whose worker died: back to queued, or failed once out of attempts."""
        if self._update(
            job_id,
            Job.status == "running",
            Job.attempts >= max_attempts,
            status="failed",
            error_code="worker_crashed",
            error_message=f"the worker died while processing this job {max_attempts} times",
            finished_at=utcnow(),
        ):
            return "failed"
        if self._update(
            job_id, Job.status == "running", status="queued", stage="requeued", percent=0
        ):
            return "queued"
        return "unchanged"


def _normalise(view: JobView) -> JobView:
    fields = ("created_at", "enqueued_at", "started_at", "finished_at", "updated_at",
              "expired_at")
    return JobView(**{**view.__dict__, **{f: _aware(getattr(view, f)) for f in fields}})
