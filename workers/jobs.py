"""One job, start to end: claim the row, decode, run the pipeline, store, record.

Idempotent by construction: a job is taken only by the conditional queued → running update,
and its result is recorded only while it is still `running` (a canceled job's result is
dropped). Errors end the job `failed` with a code, never kill the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from models.io import ImageLimits, IngestError, decode_image, encode_image, validate_image
from models.pipeline import (
    PipelineError,
    PipelineOptions,
    ProgressFn,
    get_pipeline,
    load_pipelines,
)
from service.blobs import BlobStore, make_blob_store
from service.context import register_extra_pipelines
from service.fetch import FetchError, fetch_image
from service.metrics import JOBS_PROCESSED, MODEL_LOAD_SECONDS, STAGE_SECONDS
from service.settings import Settings
from service.store import JobStore, JobView
from service.webhooks import SendFn, job_ended

log = logging.getLogger("flatlay.worker")


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

    @classmethod
    def build(cls, settings: Settings, name: str) -> WorkerContext:
        register_extra_pipelines(settings)
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


def flatten_photo(
    data: bytes,
    pipeline: str,
    options: dict[str, Any],
    limits: ImageLimits,
    timings: dict[str, float],
    progress: ProgressFn | None = None,
) -> tuple[bytes, str]:
    """The work of one job without the job store: photo bytes → (image bytes, content type).

    options: output_size, background, format, seed (as stored on the job row). `timings`
    fills with seconds per stage as each one ends, so a failure still says where time went.
    progress(stage, percent) spans the whole job: decode 0, the pipeline's stages 5–90,
    encode 90.
    """
    report = progress or (lambda stage, percent: None)
    report("decode", 0)
    start = time.perf_counter()
    rgb = decode_image(data, limits)
    timings["decode"] = round(time.perf_counter() - start, 6)

    pipeline_options = PipelineOptions(
        output_size=options["output_size"], background=options["background"],
        seed=options.get("seed"),
    )
    result = get_pipeline(pipeline)(
        rgb, pipeline_options, lambda stage, pct: report(stage, 5 + pct * 85 // 100)
    )
    timings.update(result.timings)

    report("encode", 90)
    start = time.perf_counter()
    encoded = encode_image(result.image, options["format"])
    timings["encode"] = round(time.perf_counter() - start, 6)
    return encoded


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
    job_ended(ctx.store, ctx.send_webhook, job_id)
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(job.pipeline, stage).observe(seconds)
    JOBS_PROCESSED.labels(job.pipeline, outcome).inc()
    log.info("job %s", outcome, extra={"pipeline": job.pipeline, "timings": timings})
    return outcome


def _input_of(ctx: WorkerContext, job: JobView, timings: dict[str, float]) -> bytes:
    """The job's photo; a manifest item's is fetched from its URL first (once: a retry
    finds it stored)."""
    url = job.input_meta.get("source_url")
    if not url or "content_type" in job.input_meta:
        return ctx.blobs.get(job.input_blob)
    s = ctx.settings
    ctx.store.set_progress(job.id, "fetch", 0, worker=ctx.name)
    start = time.perf_counter()
    data, _ = fetch_image(url, s.fetch_limits())
    info = validate_image(data, ImageLimits(s.max_upload_bytes, s.max_pixels, s.min_image_side))
    timings["fetch"] = round(time.perf_counter() - start, 6)
    ctx.blobs.put(job.input_blob, data)
    ctx.store.set_input(job.id, {"source_url": url, "content_type": info.content_type,
                                 "width": info.width, "height": info.height,
                                 "bytes": info.bytes})
    return data


def _run_claimed(ctx: WorkerContext, job: JobView, timings: dict[str, float]) -> str:
    job_id, me = job.id, ctx.name

    def progress(stage: str, percent: int) -> None:
        ctx.store.set_progress(job_id, stage, percent, worker=me)

    s = ctx.settings
    opts = job.options
    try:
        data, content_type = flatten_photo(
            _input_of(ctx, job, timings), job.pipeline, opts,
            ImageLimits(s.max_upload_bytes, s.max_pixels, 1), timings, progress,
        )
        ext = opts["format"].replace("jpeg", "jpg")
        # One name per attempt: a worker presumed dead that wakes up and drops its result
        # never deletes the result of the attempt that replaced it.
        result_blob = f"assets/{job_id}/result-a{job.attempts}.{ext}"
        ctx.blobs.put(result_blob, data)
    except (IngestError, PipelineError, FetchError) as exc:
        ctx.store.fail(job_id, code=exc.code, message=exc.message, timings=timings, worker=me)
        return "failed"
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

    if ctx.store.succeed(job_id, result_blob=result_blob, content_type=content_type,
                         timings=timings, worker=me):
        return "succeeded"
    # Canceled (or otherwise taken away) while running: keep nothing.
    ctx.blobs.delete(result_blob)
    return "dropped"


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
