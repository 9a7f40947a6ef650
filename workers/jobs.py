"""One job, start to end: claim the row, decode, run the pipeline, store, record.

Idempotent by construction: a job is taken only by the conditional queued → running update,
and its result is recorded only while it is still `running` (a canceled job's result is
dropped). A job canceled while running stops at its next stage boundary: each stage's
progress update is conditional on the job still being this worker's running job, and its
refusal raises JobCanceled. Errors end the job `failed` with a code, never kill the worker;
an attempt the blob store failed (StorageError) is sent again until `max_attempts`. An outage
of the job store itself (a PostgreSQL restart) is no fault of the job either: the worker
waits for the store, then records what it was about to record, or, when the outage broke
off the attempt, puts the job back in the queue. Once a job has ended, what its other
attempts left in the blob store is deleted.
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
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded

from models.errors import TypedError
from models.io import ImageLimits, validate_image
from models.pipeline import ProgressFn, load_pipelines
from models.pipeline import configure as configure_pipelines
from service.blobs import BlobStore, StorageError, make_blob_store
from service.context import register_extra_pipelines
from service.fetch import fetch_image
from service.metrics import JOBS_PROCESSED, MODEL_LOAD_SECONDS, STAGE_SECONDS
from service.outputs import discard_leftovers, input_meta, result_key, side_output_key
from service.rows import JobView
from service.settings import Settings
from service.store import STORE_OUTAGE_ERRORS, JobStore
from service.webhooks import SendFn, job_ended
from workers.flatten import FlatLayOutput, flatten_photo

log = logging.getLogger("flatlay.worker")

# Sends job `job_id` to the workers again after `countdown` seconds (raises on broker errors).
SendJobFn = Callable[[str, float], None]

T = TypeVar("T")

# Waiting out a job store outage: the first pause between pings, doubling up to the longest.
STORE_WAIT_FIRST_S = 0.5
STORE_WAIT_MAX_S = 5.0

# Outcomes after which the job has not ended: no event, no batch completion.
NOT_ENDED = frozenset({"retried", "abandoned"})


class StoreStayedDown(Exception):
    """The job store did not come back while the worker waited (the task's soft time limit):
    the job is left as the store last recorded it, to the reconciler (a `running` job is
    released once stale, a `queued` one sent again)."""


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

    def beat(self) -> None:
        """Record in the job store that this worker is alive, with the job in hand."""
        self.store.heartbeat(self.name, hostname=socket.gethostname(), pid=self.pid,
                             pipelines=sorted(self.loaded), current_job=self.current_job)


def run_job(ctx: WorkerContext, job_id: str) -> str:
    """Process job `job_id`; returns the job's final status (or 'skipped', or 'retried' and
    'abandoned' when it has not ended)."""
    try:
        job = _claim(ctx, job_id)
    except StoreStayedDown as exc:
        log.error("job %s not taken: %s", job_id, exc)
        return "abandoned"
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
    if outcome not in NOT_ENDED:
        job_ended(ctx.store, ctx.send_webhook, job_id, ctx.settings.review_confidence)
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(job.pipeline, stage).observe(seconds)
    JOBS_PROCESSED.labels(job.pipeline, outcome).inc()
    log.info("job %s", outcome, extra={"pipeline": job.pipeline, "timings": timings})
    return outcome


def _claim(ctx: WorkerContext, job_id: str) -> JobView | None:
    """queued → running for this worker (None: not there to take), through a job store
    outage: once the store answers again, claim again; an outage that hid the first claim's
    commit leaves the job this worker's and not started, which is taken as claimed."""
    try:
        return ctx.store.claim(job_id, ctx.name)
    except STORE_OUTAGE_ERRORS as exc:
        log.warning("job %s: the job store failed the claim (%s); waiting for it", job_id, exc)
        _wait_for_store(ctx)
    job = _persist(ctx, lambda: ctx.store.claim(job_id, ctx.name))
    if job is None:
        seen = _persist(ctx, lambda: ctx.store.get(job_id))
        if (seen is not None and seen.status == "running" and seen.worker == ctx.name
                and seen.stage == "starting"):
            return seen
    return job


def _wait_for_store(ctx: WorkerContext) -> None:
    """Ping the job store until it answers, pausing 0.5 s doubling up to 5 s; then record a
    heartbeat at once, or the reconciler could take the worker's silence during the outage
    for a dead worker and release its job. StoreStayedDown after the task's soft time limit
    (it would end the wait anyway, where the pool enforces it)."""
    deadline = time.monotonic() + ctx.settings.task_soft_time_limit_s
    pause = STORE_WAIT_FIRST_S
    try:
        while True:
            time.sleep(pause)
            try:
                ctx.store.ping()
                break
            except STORE_OUTAGE_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise StoreStayedDown(f"the job store stayed down: {exc}") from None
            pause = min(pause * 2, STORE_WAIT_MAX_S)
    except SoftTimeLimitExceeded:
        raise StoreStayedDown("the task ran out of time waiting for the job store") from None
    log.info("the job store answers again")
    try:
        ctx.beat()
    except Exception as exc:  # best effort, as the heartbeat thread's own beats
        log.warning("heartbeat failed: %s", exc)


def _persist(ctx: WorkerContext, call: Callable[[], T]) -> T:
    """A job store call that outlives an outage: wait for the store, then call again. Safe
    to repeat: every transition is a conditional update, so repeating one whose commit the
    outage hid changes nothing (it answers False)."""
    while True:
        try:
            return call()
        except STORE_OUTAGE_ERRORS as exc:
            log.warning("the job store failed (%s); waiting for it", exc)
            _wait_for_store(ctx)


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
    try:
        return _attempt(ctx, job, timings)
    except StoreStayedDown as exc:
        log.error("job %s: %s; left to the reconciler", job.id, exc)
        return "abandoned"


def _attempt(ctx: WorkerContext, job: JobView, timings: dict[str, float]) -> str:
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
        stage, percent = stop.stage, stop.percent
        if _persist(ctx, lambda: ctx.store.record_stop(
                job_id, stage=stage, percent=percent, timings=timings, worker=me)):
            log.info("job %s canceled; stopped before %s", job_id, stage)
            return "canceled"
        log.info("job %s taken away (deleted or released); stopped before %s", job_id, stage)
        return "dropped"
    except TypedError as exc:  # ingest, pipeline and fetch failures alike
        return _fail(ctx, job, code=exc.code, message=exc.message, timings=timings)
    except StorageError as exc:
        return _storage_failed(ctx, job, exc, timings)
    except SoftTimeLimitExceeded:
        return _fail(ctx, job, code="timeout",
                     message=f"the job ran past {ctx.settings.task_soft_time_limit_s} s",
                     timings=timings)
    except STORE_OUTAGE_ERRORS as exc:
        # The job store failed mid-attempt (a progress update, a fetched input's record):
        # no fault of the job, and nothing to finish. Once the store answers, the attempt
        # goes back to the queue.
        log.warning("job %s: the job store failed (%s); waiting for it", job_id, exc)
        _wait_for_store(ctx)
        message = (f"attempt {job.attempts}: the job store was unreachable "
                   f"({type(exc).__name__}); retrying")
        return "retried" if _requeue(ctx, job, code="service_unavailable", message=message,
                                     delay=0.0) else "dropped"
    except Exception as exc:
        log.error("job %s crashed: %s", job_id, traceback.format_exc())
        return _fail(ctx, job, code="internal_error", message=f"{type(exc).__name__}: {exc}",
                     timings=timings)
    return _record_success(ctx, job, out, result_blob, side_blobs, timings)


def _record_success(ctx: WorkerContext, job: JobView, out: FlatLayOutput, result_blob: str,
                    side_blobs: dict[str, str], timings: dict[str, float]) -> str:
    """running → succeeded with the stored outputs. Through a job store outage the outputs
    stay and are recorded once the store answers (the work is done); when the outage hid
    the commit, the job already names this result. The job's other attempts' leftovers go."""

    def succeed() -> bool:
        return ctx.store.succeed(job.id, result_blob=result_blob, content_type=out.content_type,
                                 timings=timings, worker=ctx.name, side_outputs=side_blobs,
                                 compliance=out.compliance, attributes=out.attributes)

    def names_this_result() -> bool:
        seen = ctx.store.get(job.id)
        return seen is not None and seen.status == "succeeded" and \
            seen.result_blob == result_blob

    if _persist(ctx, succeed) or _persist(ctx, names_this_result):
        discard_leftovers(ctx.blobs, job, keep=job.attempts)
        return "succeeded"
    # Canceled, deleted or otherwise taken away while running: keep nothing.
    _delete_blobs(ctx, [result_blob, *side_blobs.values()])
    return "dropped"


def _fail(ctx: WorkerContext, job: JobView, *, code: str, message: str,
          timings: dict[str, float]) -> str:
    """running → failed for good (if the job is still this worker's): what the job's other
    attempts left goes."""
    if _persist(ctx, lambda: ctx.store.fail(job.id, code=code, message=message,
                                            timings=timings, worker=ctx.name)):
        discard_leftovers(ctx.blobs, job)
    return "failed"


def _requeue(ctx: WorkerContext, job: JobView, *, code: str, message: str,
             delay: float) -> bool:
    """running → queued after an attempt failed for a reason outside the job, sent again
    after `delay` s; False when the job is no longer this worker's (canceled, taken away)."""
    if not _persist(ctx, lambda: ctx.store.retry_later(job.id, code=code, message=message,
                                                       worker=ctx.name)):
        return False
    try:
        ctx.send_job(job.id, delay)
    except Exception as send_exc:  # the job is queued: the reconciler sends it
        log.warning("could not send job %s again: %s", job.id, send_exc)
    return True


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
        if _requeue(ctx, job, code=exc.code, message=message, delay=delay):
            log.warning("job %s: blob store failed (%s); retrying in %g s", job.id, exc, delay)
            return "retried"
        return "dropped"  # canceled or taken away meanwhile
    return _fail(ctx, job, code=exc.code, timings=timings,
                 message=f"the blob store failed {job.attempts} attempts; last: {exc}")


class Heartbeat:
    """Records this worker process in the job store every `interval_s` (`flatlay status`,
    `flatlay_workers_live`), with the job in hand; removes the record on a clean stop."""

    def __init__(self, ctx: WorkerContext, interval_s: float) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat(self) -> None:
        self.ctx.beat()

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
