"""The Celery application of the workers: service configuration plus the tasks.

Models load once per worker process, in `worker_process_init` (prefork children and the
solo pool both send it), never per job.
"""

from __future__ import annotations

import logging
import os
import socket

from celery import Task
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from service.logs import TASK_REQUEST_ID_HEADER, configure_logging, log_context
from service.queue import (
    ADD_STRUCTURE_TASK,
    DELIVER_WEBHOOK_TASK,
    PROCESS_ASSET_TASK,
    make_celery,
    send_job,
    send_webhook,
)
from service.settings import get_settings
from service.webhooks import attempt_delivery
from workers.jobs import Heartbeat, WorkerContext, run_job

log = logging.getLogger("flatlay.worker")

settings = get_settings()
app = make_celery(settings)
_context: WorkerContext | None = None
_heartbeat: Heartbeat | None = None


def worker_context() -> WorkerContext:
    """This process's context; built lazily so that it is always built after the fork."""
    global _context
    if _context is None or _context.pid != os.getpid():
        _context = WorkerContext.build(settings, name=f"{socket.gethostname()}:{os.getpid()}")
        _context.send_webhook = lambda delivery_id: send_webhook(app, settings, delivery_id)
        _context.send_job = lambda job_id, countdown: send_job(app, settings, job_id,
                                                               countdown=countdown)
    return _context


@setup_logging.connect
def _logging(**_: object) -> None:
    # Connected, so Celery leaves logging (and stdout) to us: JSON lines like the API's.
    configure_logging(settings.log_level, settings.log_format)


@worker_process_init.connect
def _load_models(**_: object) -> None:
    global _heartbeat
    ctx = worker_context()
    spent = ctx.load_models()
    log.info("worker %s loaded pipelines %s", ctx.name, spent)
    _heartbeat = Heartbeat(ctx, settings.worker_heartbeat_s)
    _heartbeat.start()


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
    if _context is not None:
        _context.close()


@app.task(name=PROCESS_ASSET_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def process_asset(self: Task, job_id: str) -> str:
    """Run one asset job. The only argument is its id; the job row says everything else.
    The API's request id, when there is one, comes in the message headers."""
    request_id = getattr(self.request, TASK_REQUEST_ID_HEADER, None)
    with log_context(request_id=request_id, job_id=job_id):
        return run_job(worker_context(), job_id)


@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: str) -> None:
    """One attempt at a webhook delivery (CPU queue); the next one is scheduled with
    exponential backoff until it succeeds or runs out of attempts."""
    wait = attempt_delivery(worker_context().store, settings, delivery_id)
    if wait is not None:
        send_webhook(app, settings, delivery_id, countdown=wait)


@app.task(name=ADD_STRUCTURE_TASK, acks_late=True)
def add_structure(structure_id: str) -> str:
    """Embed a structure sent to `POST /structures` and append it to the runtime bank."""
    from workers.structures import add_structure as add

    with log_context(job_id=structure_id):
        ctx = worker_context()
        return add(ctx.blobs, settings.resolved_bank_dir, structure_id)["status"]
