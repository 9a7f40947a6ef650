"""One job, start to end: claim the row, decode, run the pipeline, store, record.

Idempotent by construction: a job is taken only by the conditional queued → running update,
and its result is recorded only while it is still `running` (a canceled job's result is
dropped). A job canceled while running stops at its next stage boundary: each stage's
progress update is conditional on the job still being this worker's running job, and its
refusal raises JobCanceled. Errors end the job `failed` with a code, never kill the worker;
an attempt the blob store failed (StorageError) is sent again until `max_attempts`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded

from models.errors import TypedError
from models.io import ImageLimits, validate_image
from models.pipeline import ProgressFn, load_pipelines
from models.pipeline import configure as configure_pipelines
from service.blobs import BlobStore, StorageError, make_blob_store
from service.context import register_extra_pipelines
from service.fetch import fetch_image
from service.metrics import JOBS_PROCESSED, MODEL_LOAD_SECONDS, STAGE_SECONDS
from service.outputs import input_meta, result_key, side_output_key
from service.rows import JobView
from service.settings import Settings
from service.store import JobStore
from service.webhooks import SendFn, job_ended
from workers.flatten import FlatLayOutput, flatten_photo

log = logging.getLogger("flatlay.worker")

# Sends job `job_id` to the workers again after `countdown` seconds (raises on broker errors).
SendJobFn = Callable[[str, float], None]


class JobCanceled(Exception):
    """The job stopped being this worker's running job (canceled, deleted, or released to
    another worker) before stage `stage` (at `percent`); raised from the progress callback,
    so the work stops at that stage boundary."""

    def __init__(self, stage: str, percent: int) -> None:
        super().__init__(f"stopped before {stage}")
        self.stage = stage
        self.percent = percent


def _no_send(job_id: str, countdown: float) -> None:
    # Without a broker (tests, tools) the reconciler re-sends the queued job later.
    log.warning("no broker to send job %s again; the reconciler will", job_id)


@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    name: str
    pid: int = field(default_factory=os.getpid)
    loaded: dict[str, float] = field(default_factory=dict)
    current_job: str | None = None
    # Queues a webhook delivery attempt (the worker's Celery app sets it).
    send_webhook: SendFn = field(default=lambda delivery_id: None)
    # Sends a job again after an attempt the blob store failed (the worker's Celery app sets it).
    send_job: SendJobFn = field(default=_no_send)

    @classmethod
    def build(cls, settings: Settings, name: str) -> WorkerContext:
        register_extra_pipelines(settings)
        # Retrieval pipelines search the service's runtime bank (grown by POST /structures).
        configure_pipelines(settings.resolved_bank_dir)
        return cls(
            settings=settings,
            store=JobStore(settings.resolved_database_url),
            blobs=make_blob_store(settings),
            name=name,
        )

    def load_models(self) -> dict[str, float]:
        wanted = self.settings.preload_pipelines.strip()
        names = None if wanted == "all" else [n.strip() for n in wanted.split(",") if n.strip()]
        self.loaded = load_pipelines(names)
        for pipeline, seconds in self.loaded.items():
            MODEL_LOAD_SECONDS.labels(pipeline).set(seconds)
        return self.loaded

    def close(self) -> None:
        self.store.dispose()


def run_job(ctx: WorkerContext, job_id: str) -> str:
    """Process job `job_id`; returns the job's final status (or 'skipped')."""
    job = ctx.store.claim(job_id, ctx.name)
    if job is None:
        log.info("job %s is not queued (duplicate delivery or canceled); skipped", job_id)
        seen = ctx.store.get(job_id)
        JOBS_PROCESSED.labels(seen.pipeline if seen else "unknown", "skipped").inc()
        return "skipped"
    ctx.current_job = job_id
    timings: dict[str, float] = {}
    try:
        outcome = _run_claimed(ctx, job, timings)
    finally:
        ctx.current_job = None
    if outcome != "retried":  # a job sent again has not ended
        job_ended(ctx.store, ctx.send_webhook, job_id)
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(job.pipeline, stage).observe(seconds)
    JOBS_PROCESSED.labels(job.pipeline, outcome).inc()
    log.info("job %s", outcome, extra={"pipeline": job.pipeline, "timings": timings})
    return outcome


def _input_of(ctx: WorkerContext, job: JobView, timings: dict[str, float],
              progress: ProgressFn) -> bytes:
    """The job's photo; a manifest item's is fetched from its URL first (once: a retry
    finds it stored)."""
    url = job.input_meta.get("source_url")
    if not url or "content_type" in job.input_meta:
        return ctx.blobs.get(job.input_blob)
    s = ctx.settings
    progress("fetch", 0)
    start = time.perf_counter()
    data, _ = fetch_image(url, s.fetch_limits())
    info = validate_image(data, s.image_limits())
    timings["fetch"] = round(time.perf_counter() - start, 6)
    ctx.blobs.put(job.input_blob, data)
    ctx.store.set_input(job.id, input_meta(info, source_url=url))
    return data


def _store_outputs(
    ctx: WorkerContext, job: JobView, out: FlatLayOutput
) -> tuple[str, dict[str, str]]:
    """Put the result and its side outputs under this attempt's names; on any error, what
    was put is deleted again. Returns (result blob, side output name → blob)."""
    written: list[str] = []
    try:
        result_blob = result_key(job.id, job.attempts, job.options["format"])
        ctx.blobs.put(result_blob, out.data)
        written.append(result_blob)
        side: dict[str, str] = {}
        for name, data in out.side_outputs.items():
            side[name] = side_output_key(job.id, job.attempts, name)
            ctx.blobs.put(side[name], data)
            written.append(side[name])
    except BaseException:
        _delete_blobs(ctx, written)
        raise
    return result_blob, side


def _delete_blobs(ctx: WorkerContext, keys: list[str]) -> None:
    for key in keys:
        try:
            ctx.blobs.delete(key)
        except Exception as exc:  # the retention sweep and DELETE try again later
            log.warning("could not delete blob %s: %s", key, exc)


def _run_claimed(ctx: WorkerContext, job: JobView, timings: dict[str, float]) -> str:
    job_id, me = job.id, ctx.name

    def progress(stage: str, percent: int) -> None:
        # The cancel flag costs nothing extra: the update that records the stage is
        # conditional on the job still being ours and running.
        if not ctx.store.set_progress(job_id, stage, percent, worker=me):
            raise JobCanceled(stage, percent)

    s = ctx.settings
    try:
        out = flatten_photo(
            _input_of(ctx, job, timings, progress), job.pipeline, job.options,
            ImageLimits(s.max_upload_bytes, s.max_pixels, 1), timings, progress,
        )
        progress("store", 98)
        # One name per attempt: a worker presumed dead that wakes up and drops its outputs
        # never deletes the outputs of the attempt that replaced it.
        result_blob, side_blobs = _store_outputs(ctx, job, out)
    except JobCanceled as stop:
        if ctx.store.record_stop(job_id, stage=stop.stage, percent=stop.percent,
                                 timings=timings, worker=me):
            log.info("job %s canceled; stopped before %s", job_id, stop.stage)
            return "canceled"
        log.info("job %s taken away (deleted or released); stopped before %s", job_id,
                 stop.stage)
        return "dropped"
    except TypedError as exc:  # ingest, pipeline and fetch failures alike
        ctx.store.fail(job_id, code=exc.code, message=exc.message, timings=timings, worker=me)
        return "failed"
    except StorageError as exc:
        return _storage_failed(ctx, job, exc, timings)
    except SoftTimeLimitExceeded:
        ctx.store.fail(
            job_id,
            code="timeout",
            message=f"the job ran past {ctx.settings.task_soft_time_limit_s} s",
            timings=timings,
            worker=me,
        )
        return "failed"
    except Exception as exc:
        log.error("job %s crashed: %s", job_id, traceback.format_exc())
        ctx.store.fail(
            job_id, code="internal_error", message=f"{type(exc).__name__}: {exc}",
            timings=timings, worker=me,
        )
        return "failed"

    if ctx.store.succeed(job_id, result_blob=result_blob, content_type=out.content_type,
                         timings=timings, worker=me, side_outputs=side_blobs,
                         compliance=out.compliance, attributes=out.attributes):
        return "succeeded"
    # Canceled, deleted or otherwise taken away while running: keep nothing.
    _delete_blobs(ctx, [result_blob, *side_blobs.values()])
    return "dropped"


def _storage_failed(ctx: WorkerContext, job: JobView, exc: StorageError,
                    timings: dict[str, float]) -> str:
    """An attempt the blob store failed (what it wrote is already deleted): back to `queued`
    and sent again after a doubling delay, or `failed` with `storage_unavailable` once
    `max_attempts` attempts have been made. Never `succeeded`: the result is not stored."""
    s = ctx.settings
    if job.attempts < s.max_attempts:
        delay = min(s.storage_retry_s * 2 ** (job.attempts - 1), 60.0)
        message = (f"attempt {job.attempts} of {s.max_attempts}: {exc}; "
                   f"retrying in {delay:g} s")
        if ctx.store.retry_later(job.id, code=exc.code, message=message, worker=ctx.name):
            log.warning("job %s: blob store failed (%s); retrying in %g s", job.id, exc, delay)
            try:
                ctx.send_job(job.id, delay)
            except Exception as send_exc:  # the job is queued: the reconciler sends it
                log.warning("could not send job %s again: %s", job.id, send_exc)
            return "retried"
        return "dropped"  # canceled or taken away meanwhile
    ctx.store.fail(job.id, code=exc.code, timings=timings, worker=ctx.name,
                   message=f"the blob store failed {job.attempts} attempts; last: {exc}")
    return "failed"


class Heartbeat:
    """Records this worker process in the job store every `interval_s` (`flatlay status`,
    `flatlay_workers_live`), with the job in hand; removes the record on a clean stop."""

    def __init__(self, ctx: WorkerContext, interval_s: float) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat(self) -> None:
        self.ctx.store.heartbeat(
            self.ctx.name, hostname=socket.gethostname(), pid=self.ctx.pid,
            pipelines=sorted(self.ctx.loaded), current_job=self.ctx.current_job,
        )

    def start(self) -> None:
        # Records of workers killed long ago would only grow the table.
        self.ctx.store.prune_workers(older_than_s=86400)
        self.beat()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # a store outage must not kill the worker
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.ctx.store.forget_worker(self.ctx.name)
        except Exception as exc:
            log.warning("could not remove the worker record: %s", exc)
