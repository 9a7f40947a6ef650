"""`flatlay status`: queue depth, jobs by state and live workers, read from the job store.

Works the same in both modes: the job store holds the jobs and the workers' heartbeats
(`workers` table), so no broker broadcast (which the file transport lacks) is needed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from service.queue import broker_queue_depth
from service.rows import JOB_STATES, WorkerRow, utcnow
from service.settings import Settings
from service.store import JobStore


class StatusError(Exception):
    """The job store cannot be read; the message says what to do."""


def collect_status(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not Path(path).is_file():
            raise StatusError(
                f"no job store at {path}: is --data-dir right? (`flatlay serve` or "
                "`flatlay migrate` creates it)"
            )
    store = JobStore(url)
    try:
        try:
            if WorkerRow.__tablename__ not in inspect(store.engine).get_table_names():
                raise StatusError(
                    f"the job store at {settings.redacted_database_url} is not at the newest "
                    "migration; run `flatlay migrate`"
                )
            counts = store.count_by_status()
            workers = store.live_workers(settings.worker_live_within_s)
        except SQLAlchemyError as exc:
            reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
            raise StatusError(
                f"cannot read the job store at {settings.redacted_database_url}: {reason}"
            ) from None
    finally:
        store.dispose()
    now = utcnow()
    return {
        "job_store": settings.redacted_database_url,
        "queue": settings.queue_name,
        "queue_depth": counts.get("queued", 0),
        "broker_queue_depth": broker_queue_depth(settings),
        "jobs": {state: counts.get(state, 0) for state in JOB_STATES},
        "workers": [
            {**asdict(w), "started_at": w.started_at.isoformat(),
             "last_seen_at": w.last_seen_at.isoformat(),
             "last_seen_s": round((now - w.last_seen_at).total_seconds(), 1)}
            for w in workers
        ],
    }


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{dt.timedelta(seconds=int(seconds))} ago"


def format_status(status: dict[str, Any]) -> str:
    """The status as a small table for people."""
    broker = status["broker_queue_depth"]
    lines = [
        f"job store    {status['job_store']}",
        f"queue        {status['queue_depth']} job(s) waiting in {status['queue']}"
        + (f" (the broker holds {broker} message(s))" if broker is not None else ""),
        "jobs         " + "   ".join(f"{s} {n}" for s, n in status["jobs"].items()),
        f"workers      {len(status['workers'])} live",
    ]
    if status["workers"]:
        rows = [("NAME", "PIPELINES", "JOB", "LAST SEEN")] + [
            (w["name"], ",".join(w["pipelines"]) or "-", w["current_job"] or "idle",
             _ago(w["last_seen_s"]))
            for w in status["workers"]
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
    return "\n".join(lines)
