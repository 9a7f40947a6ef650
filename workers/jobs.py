"""One job, start to end: claim the row, decode, run the pipeline, store, record.

Idempotent by construction: a job is taken only by the conditional queued → running update,
and its result is recorded only while it is still `running` (a canceled job's result is
dropped). Errors end the job `failed` with a code, never kill the worker.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from models.io import ImageLimits, IngestError, decode_image, encode_image, validate_image
from models.pipeline import (
    PipelineError,
    PipelineOptions,
    ProgressFn,
    StructureSpec,
    load_pipelines,
    run_pipeline,
    side_output_files,
)
from models.pipeline import configure as configure_pipelines
from models.presets import DEFAULT_PRESET, check_compliance, get_preset
from service.blobs import BlobStore, make_blob_store
from service.context import register_extra_pipelines
from service.fetch import FetchError, fetch_image
from service.metrics import JOBS_PROCESSED, MODEL_LOAD_SECONDS, STAGE_SECONDS
from service.outputs import result_key, side_output_key
from service.rows import JobView
from service.settings import Settings
from service.store import JobStore
from service.webhooks import SendFn, job_ended
from structure_bank.validate import InvalidStructure

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


@dataclass
class FlatLayOutput:
    """What one photo gives: the delivered image, its side outputs and its compliance check.

    data, content_type: the encoded image. side_outputs: name → encoded file (see
    models.pipeline.SIDE_OUTPUTS; only those the pipeline produced). compliance: the
    delivered image checked against the job's preset (models.presets.check_compliance).
    """

    data: bytes
    content_type: str
    side_outputs: dict[str, bytes]
    compliance: dict[str, Any]


def pipeline_options(options: dict[str, Any]) -> PipelineOptions:
    """The pipeline's options from a job's stored options (output_size, background, seed,
    preset, structure in its JSON form). Raises InvalidStructure or ValueError."""
    structure = options.get("structure")
    return PipelineOptions(
        output_size=options["output_size"], background=options["background"],
        seed=options.get("seed"), preset=options.get("preset") or DEFAULT_PRESET,
        structure=StructureSpec.parse(structure) if structure is not None else None,
        steps=options.get("steps"),
    )


def decode_delivered(data: bytes) -> np.ndarray:
    """The delivered bytes as the buyer's software sees them: (H, W, 3) or, when the file
    has an alpha channel, (H, W, 4) uint8."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        alpha = "A" in img.getbands() or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if alpha else "RGB"))


def flatten_photo(
    data: bytes,
    pipeline: str,
    options: dict[str, Any],
    limits: ImageLimits,
    timings: dict[str, float],
    progress: ProgressFn | None = None,
) -> FlatLayOutput:
    """The work of one job without the job store: photo bytes → image, side outputs and
    compliance.

    options: output_size, background, format, seed, preset, structure (as stored on the job
    row). `timings` fills with seconds per stage as each one ends, so a failure still says
    where time went. progress(stage, percent) spans the whole job: decode 0, the pipeline's
    stages 5–90, encode 90, check 95.
    """
    report = progress or (lambda stage, percent: None)
    try:
        pipeline_opts = pipeline_options(options)
    except InvalidStructure as exc:
        raise PipelineError("invalid_structure", f"{exc.field}: {exc.message}") from None
    report("decode", 0)
    start = time.perf_counter()
    rgb = decode_image(data, limits)
    timings["decode"] = round(time.perf_counter() - start, 6)

    result = run_pipeline(
        pipeline, rgb, pipeline_opts, lambda stage, pct: report(stage, 5 + pct * 85 // 100)
    )
    timings.update(result.timings)

    report("encode", 90)
    start = time.perf_counter()
    encoded, content_type = encode_image(result.image, options["format"])
    side = side_output_files(result)
    timings["encode"] = round(time.perf_counter() - start, 6)

    # On the bytes the caller gets, not on the canvas: JPEG and WebP change pixels.
    report("check", 95)
    start = time.perf_counter()
    compliance = check_compliance(decode_delivered(encoded), result.alpha,
                                  get_preset(pipeline_opts.preset), options["format"],
                                  pipeline_opts.background)
    timings["check"] = round(time.perf_counter() - start, 6)
    return FlatLayOutput(encoded, content_type, side, compliance)


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
        ctx.store.set_progress(job_id, stage, percent, worker=me)

    s = ctx.settings
    try:
        out = flatten_photo(
            _input_of(ctx, job, timings), job.pipeline, job.options,
            ImageLimits(s.max_upload_bytes, s.max_pixels, 1), timings, progress,
        )
        # One name per attempt: a worker presumed dead that wakes up and drops its outputs
        # never deletes the outputs of the attempt that replaced it.
        result_blob, side_blobs = _store_outputs(ctx, job, out)
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

    if ctx.store.succeed(job_id, result_blob=result_blob, content_type=out.content_type,
                         timings=timings, worker=me, side_outputs=side_blobs,
                         compliance=out.compliance):
        return "succeeded"
    # Canceled, deleted or otherwise taken away while running: keep nothing.
    _delete_blobs(ctx, [result_blob, *side_blobs.values()])
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
