"""Structured logs: one JSON object per line, with the request id and the job id where known.

The ids live in context variables: the API's request middleware sets `request_id`, the
routes and the worker set `job_id`, and every record logged while they are set carries them,
whichever library logged it. The request id travels from the API to the worker in the Celery
message headers (`TASK_REQUEST_ID_HEADER`), never as a task argument.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar

TASK_REQUEST_ID_HEADER = "request_id"  # Celery message header (HTTP: X-Request-ID)

request_id_var: ContextVar[str | None] = ContextVar("flatlay_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("flatlay_job_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged too.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime",
                                                                  "request_id", "job_id"}


@contextlib.contextmanager
def log_context(*, request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Within the block, records carry these ids (None leaves an id as it was)."""
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if job_id is not None:
        tokens.append((job_id_var, job_id_var.set(job_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class _ContextIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "job_id"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        entry.update(
            {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        )
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{k}={getattr(record, k)}" for k in ("request_id", "job_id")
               if getattr(record, k, None)]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route every logger (uvicorn's, Celery's, ours) through one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextIds())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that install handlers of their own would log twice or in another format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
