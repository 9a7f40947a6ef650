"""The Celery application of the workers: service configuration plus the tasks.

Models load once per worker process, in `worker_process_init` (prefork children and the
solo pool both send it), never per job.
"""

from __future__ import annotations

import logging
import os
import socket

from celery.concurrency import asynpool
from celery.signals import worker_process_init, worker_process_shutdown

from service.queue import PROCESS_ASSET_TASK, make_celery
from service.settings import get_settings
from workers.jobs import WorkerContext, run_job

log = logging.getLogger("flatlay.worker")

# Loading models takes longer than the 4 s Celery allows a child to start by default.
asynpool.PROC_ALIVE_TIMEOUT = 600.0

settings = get_settings()
app = make_celery(settings)
_context: WorkerContext | None = None


def worker_context() -> WorkerContext:
    """This process's context; built lazily so that it is always built after the fork."""
    global _context
    if _context is None or _context.pid != os.getpid():
        _context = WorkerContext.build(settings, name=f"{socket.gethostname()}:{os.getpid()}")
    return _context


@worker_process_init.connect
def _load_models(**_: object) -> None:
    ctx = worker_context()
    spent = ctx.load_models()
    log.info("worker %s loaded pipelines %s", ctx.name, spent)


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if _context is not None:
        _context.close()


@app.task(name=PROCESS_ASSET_TASK, acks_late=True, reject_on_worker_lost=True)
def process_asset(job_id: str) -> str:
    """Run one asset job. The only argument is its id; the job row says everything else."""
    return run_job(worker_context(), job_id)
