"""What a request handler needs, built once per API process and injected with Depends."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import Celery
from fastapi import Request

from service.blobs import BlobStore, make_blob_store
from service.logs import TASK_REQUEST_ID_HEADER, request_id_var
from service.queue import make_celery, revoke_job, send_job, send_webhook
from service.settings import Settings
from service.store import JobStore

if TYPE_CHECKING:
    from service.ratelimit import TokenBucket

log = logging.getLogger("flatlay.service")


def register_extra_pipelines(settings: Settings) -> None:
    """Register the pipelines named by `extra_pipelines` (imported only when built)."""
    from models.pipeline import register_pipeline

    for name, target in settings.extra_pipeline_targets.items():
        register_pipeline(name, target)


@dataclass
class ServiceContext:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    celery: Celery
    limiter: TokenBucket | None = None
    # Uploads held in memory at once (bytes and a full decode each): see service.assets.
    ingest_slots: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ingest_slots = threading.BoundedSemaphore(self.settings.ingest_concurrency)

    @classmethod
    def build(cls, settings: Settings) -> ServiceContext:
        from service.ratelimit import make_token_bucket

        settings.ensure_dirs()
        return cls(
            settings=settings,
            store=JobStore(settings.resolved_database_url),
            blobs=make_blob_store(settings),
            celery=make_celery(settings),
            limiter=make_token_bucket(settings),
        )

    def enqueue(self, job_id: str) -> bool:
        """Send the job id to the workers. False when the broker is down: the job stays
        `queued` in the store and the reconciler sends it again. The request id, when there
        is one, rides in the message headers so that the worker's logs carry it."""
        request_id = request_id_var.get()
        try:
            send_job(self.celery, self.settings, job_id,
                     headers={TASK_REQUEST_ID_HEADER: request_id} if request_id else None)
        except Exception as exc:  # broker errors come in many types (kombu, redis, OS)
            log.warning("enqueue of job %s failed, the reconciler will retry: %s", job_id, exc)
            return False
        self.store.mark_enqueued(job_id)
        return True

    def revoke(self, job_id: str) -> bool:
        """After a cancel: tell the workers to drop the job's waiting messages."""
        return revoke_job(self.celery, self.settings, job_id)

    def send_webhook(self, delivery_id: str) -> None:
        send_webhook(self.celery, self.settings, delivery_id)

    def close(self) -> None:
        self.store.dispose()


def get_context(request: Request) -> ServiceContext:
    return request.app.state.ctx
