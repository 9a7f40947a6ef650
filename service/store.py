"""The job store: one row per asset job, the source of truth for its state.

SQLAlchemy 2.x; SQLite in embedded mode, PostgreSQL by URL. The schema is managed by the
Alembic migrations in `service/migrations`; `migrate()` brings a database to head.
State changes are conditional UPDATEs, so a duplicated delivery of the same job id (broker
redelivery, reconciler) can never run a job twice at once or resurrect a finished one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.rows import (
    JOB_STATES,
    TERMINAL_STATES,
    Base,
    Idempotency,
    IdempotencyConflict,
    IdempotencyRecord,
    IdempotencyRow,
    Job,
    JobView,
    WorkerRow,
    WorkerView,
    aware,
    new_job_row,
    normalise,
    utcnow,
)
from service.store_queries import ApiKeyQueries, BatchQueries, DeliveryQueries

# What a job store outage raises (the server down or restarting, a dropped connection, SQLite
# locked past its busy timeout): a failure of the infrastructure, not of the job in hand.
STORE_OUTAGE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


def new_job_id() -> str:
    return uuid.uuid4().hex


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


class JobStore(ApiKeyQueries, BatchQueries, DeliveryQueries):
    """Job rows: create, read, and the conditional state transitions of a job's life; worker
    heartbeats and what the reconciler looks for. The key, batch and webhook-delivery queries
    come from service.store_queries; the rows themselves are service.rows."""

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
            job = self._owned_row(s, Job, job_id, tenant_id)
            if job is None:
                return None
            view = JobView.of(job)
        return normalise(view)

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
    ) -> bool:
        """Record the stage a running job enters; False when the job is no longer this
        worker's running job (canceled, deleted, or released to another worker): the
        worker's cue to stop (workers.jobs.JobCanceled)."""
        return self._update(job_id, Job.status == "running", *self._held_by(worker),
                            stage=stage, percent=int(percent))

    def record_stop(
        self, job_id: str, *, stage: str, percent: int, timings: dict[str, float], worker: str
    ) -> bool:
        """A job canceled while running: where its worker stopped (the stage it did not
        start) and what it had measured. False when there is no such canceled job."""
        return self._update(job_id, Job.status == "canceled", Job.worker == worker,
                            stage=stage, percent=int(percent), timings=timings)

    def retry_later(self, job_id: str, *, code: str, message: str, worker: str) -> bool:
        """running → queued after an attempt failed for a reason outside the job (the blob
        store): the error stays visible until the next attempt claims it; `attempts`
        counts on. False when the job is no longer this worker's."""
        return self._update(
            job_id, Job.status == "running", Job.worker == worker, status="queued",
            stage="retrying", percent=0, error_code=code, error_message=message[:2000],
            enqueued_at=utcnow(),
        )

    def succeed(
        self, job_id: str, *, result_blob: str, content_type: str, timings: dict[str, float],
        worker: str | None = None, side_outputs: dict[str, str] | None = None,
        compliance: dict[str, Any] | None = None, attributes: dict[str, Any] | None = None,
    ) -> bool:
        """running → succeeded with the result, its side outputs (name → blob key), its
        compliance check and its catalog attributes; False when the job is no longer this
        worker's to finish."""
        return self._update(
            job_id,
            Job.status == "running",
            *self._held_by(worker),
            status="succeeded",
            result_blob=result_blob,
            result_content_type=content_type,
            side_outputs=side_outputs or {},
            compliance=compliance,
            attributes=attributes,
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
            return [normalise(JobView.of(j)) for j in rows]

    def mark_expired(self, job_id: str) -> None:
        self._update(job_id, Job.expired_at.is_(None), expired_at=utcnow(), result_blob=None)

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
                    current_job=r.current_job, started_at=aware(r.started_at),  # type: ignore[arg-type]
                    last_seen_at=aware(r.last_seen_at),  # type: ignore[arg-type]
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
