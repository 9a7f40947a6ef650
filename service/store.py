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
    select,
    text,
    update,
)
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
    status: Mapped[str] = mapped_column(String(16), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_blob: Mapped[str] = mapped_column(String(255))
    input_meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    result_blob: Mapped[str | None] = mapped_column(String(255))
    result_content_type: Mapped[str | None] = mapped_column(String(64))
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
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


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
    status: str
    pipeline: str
    options: dict[str, Any]
    input_blob: str
    input_meta: dict[str, Any]
    result_blob: str | None
    result_content_type: str | None
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

    command.upgrade(_alembic_config(database_url), revision)


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
        pipeline: str,
        options: dict[str, Any],
        input_blob: str,
        input_meta: dict[str, Any],
    ) -> JobView:
        now = utcnow()
        job = Job(
            id=job_id,
            status="queued",
            pipeline=pipeline,
            options=options,
            input_blob=input_blob,
            input_meta=input_meta,
            percent=0,
            timings={},
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        with self._session() as s, s.begin():
            s.add(job)
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> JobView | None:
        with self._session() as s:
            job = s.get(Job, job_id)
            if job is None:
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

    def set_progress(self, job_id: str, stage: str, percent: int) -> None:
        self._update(job_id, Job.status == "running", stage=stage, percent=int(percent))

    def succeed(
        self, job_id: str, *, result_blob: str, content_type: str, timings: dict[str, float]
    ) -> bool:
        return self._update(
            job_id,
            Job.status == "running",
            status="succeeded",
            result_blob=result_blob,
            result_content_type=content_type,
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
    ) -> bool:
        values: dict[str, Any] = {
            "status": "failed",
            "error_code": code,
            "error_message": message[:2000],
            "finished_at": utcnow(),
        }
        if timings is not None:
            values["timings"] = timings
        return self._update(job_id, Job.status.in_(from_states), **values)

    def cancel(self, job_id: str) -> bool:
        return self._update(
            job_id, Job.status.in_(("queued", "running")), status="canceled", finished_at=utcnow()
        )

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
    fields = ("created_at", "enqueued_at", "started_at", "finished_at", "updated_at")
    return JobView(**{**view.__dict__, **{f: _aware(getattr(view, f)) for f in fields}})
