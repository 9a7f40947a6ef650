"""One job, start to end: claim the row, decode, run the pipeline, store, record.

Idempotent by construction: a job is taken only by the conditional queued → running update,
and its result is recorded only while it is still `running` (a canceled job's result is
dropped). Errors end the job `failed` with a code, never kill the worker.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded

from models.io import ImageLimits, IngestError, decode_image, encode_image
from models.pipeline import PipelineError, PipelineOptions, get_pipeline, load_pipelines
from service.blobs import BlobStore, LocalBlobStore
from service.settings import Settings
from service.store import JobStore

log = logging.getLogger("flatlay.worker")


@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    name: str
    pid: int = field(default_factory=os.getpid)
    loaded: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, name: str) -> WorkerContext:
        return cls(
            settings=settings,
            store=JobStore(settings.resolved_database_url),
            blobs=LocalBlobStore(settings.resolved_blob_dir),
            name=name,
        )

    def load_models(self) -> dict[str, float]:
        wanted = self.settings.preload_pipelines.strip()
        names = None if wanted == "all" else [n.strip() for n in wanted.split(",") if n.strip()]
        self.loaded = load_pipelines(names)
        return self.loaded

    def close(self) -> None:
        self.store.dispose()


def run_job(ctx: WorkerContext, job_id: str) -> str:
    """Process job `job_id`; returns the job's final status (or 'skipped')."""
    job = ctx.store.claim(job_id, ctx.name)
    if job is None:
        log.info("job %s is not queued (duplicate delivery or canceled); skipped", job_id)
        return "skipped"
    timings: dict[str, float] = {}

    def progress(stage: str, percent: int) -> None:
        ctx.store.set_progress(job_id, stage, percent)

    try:
        start = time.perf_counter()
        progress("decode", 0)
        s = ctx.settings
        rgb = decode_image(
            ctx.blobs.get(job.input_blob), ImageLimits(s.max_upload_bytes, s.max_pixels, 1)
        )
        timings["decode"] = round(time.perf_counter() - start, 6)

        opts = job.options
        options = PipelineOptions(
            output_size=opts["output_size"], background=opts["background"], seed=opts["seed"]
        )
        # Pipeline stages report 0–100 of their own; the job's bar spans 5–90 for them.
        result = get_pipeline(job.pipeline)(
            rgb, options, lambda stage, pct: progress(stage, 5 + pct * 85 // 100)
        )
        timings.update(result.timings)

        progress("encode", 90)
        start = time.perf_counter()
        data, content_type = encode_image(result.image, opts["format"])
        ext = opts["format"].replace("jpeg", "jpg")
        result_blob = f"assets/{job_id}/result.{ext}"
        ctx.blobs.put(result_blob, data)
        timings["encode"] = round(time.perf_counter() - start, 6)
    except (IngestError, PipelineError) as exc:
        ctx.store.fail(job_id, code=exc.code, message=exc.message, timings=timings)
        return "failed"
    except SoftTimeLimitExceeded:
        ctx.store.fail(
            job_id,
            code="timeout",
            message=f"the job ran past {ctx.settings.task_soft_time_limit_s} s",
            timings=timings,
        )
        return "failed"
    except Exception as exc:
        log.error("job %s crashed: %s", job_id, traceback.format_exc())
        ctx.store.fail(
            job_id, code="internal_error", message=f"{type(exc).__name__}: {exc}", timings=timings
        )
        return "failed"

    if ctx.store.succeed(job_id, result_blob=result_blob, content_type=content_type,
                         timings=timings):
        return "succeeded"
    # Canceled (or otherwise taken away) while running: keep nothing.
    ctx.blobs.delete(result_blob)
    return "dropped"
