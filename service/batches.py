"""`/batches`: many photos in one request (files, one ZIP, or a manifest of SKU + image URL),
their status per SKU, and their results as one streamed ZIP.

Members that cannot be taken are rejected with a code and a reason (service.batch_unpack,
service.batch_manifest); the rest of the batch goes on. Accepted members become ordinary
jobs (jobs.batch_id, jobs.sku), stored with their batch in one transaction and enqueued by id
like any asset. The results ZIP is service.batch_results.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import IO, Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import StreamingResponse

from service.auth import Principal
from service.batch_manifest import unpack_manifest
from service.batch_results import ATTRIBUTE_COLUMNS, stream_results
from service.batch_unpack import Unpacked, unpack_files, unpack_zip
from service.context import ServiceContext
from service.deps import (
    Ctx,
    IdempotencyKey,
    Key,
    discard_stored,
    located,
    lost_race,
    owned,
    replayed_or_conflict,
    request_idempotency,
    request_webhook_target,
)
from service.errors import ApiError, error_responses
from service.fetch import AllowList
from service.options import OptionForm, resolve_options
from service.outputs import input_key, input_meta
from service.rows import BatchView, IdempotencyConflict, Job, JobView, new_job_row
from service.schemas import (
    BatchCounts,
    BatchCreated,
    BatchItem,
    BatchLinks,
    BatchRejection,
    BatchStatus,
    JobError,
)
from service.settings import Settings
from service.store import new_job_id

log = logging.getLogger("flatlay.batches")
router = APIRouter()


# --- Views ------------------------------------------------------------------------------------


def _links(batch_id: str) -> BatchLinks:
    return BatchLinks(self=f"/batches/{batch_id}", results=f"/batches/{batch_id}/results")


def _counts(batch: BatchView, jobs: list[JobView]) -> BatchCounts:
    by = {s: 0 for s in ("queued", "running", "succeeded", "failed", "canceled")}
    for job in jobs:
        by[job.status] += 1
    return BatchCounts(total=len(jobs) + len(batch.rejected), rejected=len(batch.rejected),
                       **by)


def _created(batch: BatchView, jobs: list[JobView]) -> BatchCreated:
    return BatchCreated(
        id=batch.id, status="completed" if batch.completed_at else "processing",
        created_at=batch.created_at, counts=_counts(batch, jobs),
        rejected=[BatchRejection(**r) for r in batch.rejected], links=_links(batch.id),
    )


def batch_status(batch: BatchView, jobs: list[JobView]) -> BatchStatus:
    items = [
        BatchItem(sku=j.sku or j.id, asset_id=j.id, status=j.status,  # type: ignore[arg-type]
                  error=JobError(code=j.error_code, message=j.error_message or "")
                  if j.error_code else None)
        for j in jobs
    ]
    return BatchStatus(**_created(batch, jobs).model_dump(), source=batch.source,  # type: ignore[arg-type]
                       options=batch.options, completed_at=batch.completed_at, items=items)


# --- Submitting -------------------------------------------------------------------------------


def _batch_or_404(ctx: ServiceContext, key: Principal, batch_id: str) -> BatchView:
    return owned(ctx.store.get_batch, batch_id, key, "batch_not_found", "batch")


def _spooled_size(f: IO[bytes]) -> int:
    f.seek(0, io.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


def _digest(f: IO[bytes]) -> bytes:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    f.seek(0)
    return h.digest()


def _one_source(**sources: Any) -> tuple[str, list[UploadFile]]:
    """The one source given (files, archive or manifest) and its uploads."""
    given = [name for name, value in sources.items() if value]
    if len(given) != 1:
        raise ApiError("validation_error", "give exactly one of files, archive or manifest",
                       given[1] if len(given) > 1 else "files")
    source = given[0]
    return source, sources[source] if source == "files" else [sources[source]]


def _check_size(s: Settings, source: str, uploads: list[UploadFile]) -> None:
    """413 when the request holds more items or bytes than a batch may."""
    if len(uploads) > s.batch_max_items:
        raise ApiError("batch_too_large", f"a batch holds at most {s.batch_max_items} items",
                       source)
    limit = s.max_manifest_bytes if source == "manifest" else s.max_batch_bytes
    if sum(_spooled_size(u.file) for u in uploads) > limit:
        raise ApiError("batch_too_large", f"the request holds more than {limit} bytes", source)


def _unpack(s: Settings, source: str, uploads: list[UploadFile], pipeline: str,
            options: dict[str, Any], given: dict[str, Any]) -> Unpacked:
    limits = s.image_limits()
    if source == "files":
        return unpack_files([(u.filename or f"file-{i}", u.file.read())
                             for i, u in enumerate(uploads, start=1)],
                            limits, pipeline, options)
    if source == "archive":
        return unpack_zip(uploads[0].file, limits, s.batch_max_items, s.max_batch_bytes,
                          pipeline, options)
    return unpack_manifest(uploads[0].file.read(), uploads[0].filename or "",
                           s.batch_max_items, AllowList.parse(s.fetch_allow_hosts),
                           pipeline, given, s.default_pipeline)


def _job_rows(ctx: ServiceContext, key: Principal, batch_id: str, unpacked: Unpacked,
              webhook_url: str | None) -> tuple[list[Job], list[str]]:
    """A queued job per member, its photo stored (a manifest item's is fetched by its
    worker); (the jobs, the blobs stored)."""
    jobs, blobs = [], []
    for m in unpacked.members:
        job_id = new_job_id()
        if m.data is not None and m.info is not None:
            input_blob = input_key(job_id, m.info.format)
            try:
                ctx.blobs.put(input_blob, m.data)
            except Exception:
                discard_stored(ctx, blobs)  # the members stored before this one
                raise
            blobs.append(input_blob)
            meta = input_meta(m.info, filename=m.name)
        else:
            input_blob, meta = input_key(job_id), {"source_url": m.url}
        jobs.append(new_job_row(job_id=job_id, tenant_id=key.tenant_id, pipeline=m.pipeline,
                                options=m.options, input_blob=input_blob, input_meta=meta,
                                batch_id=batch_id, sku=m.sku, webhook_url=webhook_url,
                                key_id=key.key_id))
    return jobs, blobs


def _answer(ctx: ServiceContext, batch: BatchView, response: Response,
            replayed: bool = False) -> BatchCreated:
    located(response, f"/batches/{batch.id}", replayed)
    return _created(batch, ctx.store.batch_jobs(batch.id))


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchCreated,
    summary="Submit many photos: files, one ZIP, or a manifest of SKU + image URL",
    description="Give exactly one of `files` (repeat the field), `archive` (a ZIP) or "
    "`manifest` (JSON: a list of `{sku, image_url, options}`, or CSV with the columns sku, "
    "image_url and optionally pipeline, preset, output_size, background, format, seed, "
    "structure). The batch's options apply to every item; a manifest item's own options "
    "override them, then the item's preset gives the defaults of what neither sets. Members "
    "that cannot be taken are listed in `rejected` with a code; the rest go on.",
    responses=error_responses("unauthorized", "validation_error", "unknown_pipeline",
                              "invalid_structure", "corrupt_archive", "invalid_manifest",
                              "batch_too_large", "payload_too_large", "request_timeout",
                              "idempotency_key_reused", "rate_limited"),
)
def create_batch(
    ctx: Ctx,
    key: Key,
    response: Response,
    fields: OptionForm,
    files: Annotated[list[UploadFile] | None, File(description="photos")] = None,
    archive: Annotated[UploadFile | None, File(description="a ZIP of photos")] = None,
    manifest: Annotated[UploadFile | None, File(description="JSON or CSV manifest")] = None,
    idempotency_key: IdempotencyKey = None,
    webhook_url: Annotated[str | None, Form(description="receives asset.succeeded, "
                                            "asset.failed and batch.completed")] = None,
) -> BatchCreated:
    s = ctx.settings
    source, uploads = _one_source(files=files, archive=archive, manifest=manifest)
    pipeline, options = resolve_options(fields.pipeline, fields.given, s.default_pipeline)
    webhook_url = request_webhook_target(webhook_url, key, s)
    _check_size(s, source, uploads)
    asked = {"source": source, "pipeline": pipeline, "webhook_url": webhook_url, **options,
             "names": [u.filename for u in uploads]}
    idem = request_idempotency(idempotency_key, "batches", asked,
                               (_digest(u.file) for u in uploads))
    if (earlier := replayed_or_conflict(ctx, key, idem)) is not None:
        return _answer(ctx, _batch_or_404(ctx, key, earlier), response, replayed=True)
    unpacked = _unpack(s, source, uploads, pipeline, options, fields.given)
    batch_id = new_job_id()
    jobs, blobs = _job_rows(ctx, key, batch_id, unpacked, webhook_url)
    try:
        batch = ctx.store.create_batch(
            batch_id=batch_id, tenant_id=key.tenant_id, source=source,
            options={"pipeline": pipeline, **options}, rejected=unpacked.rejected,
            webhook_url=webhook_url, jobs=jobs, idempotency=idem, key_id=key.key_id,
        )
    except IdempotencyConflict as conflict:
        twin = lost_race(ctx, key, idem, conflict, blobs)
        return _answer(ctx, _batch_or_404(ctx, key, twin), response, replayed=True)
    except Exception:
        discard_stored(ctx, blobs)  # no row names them: keep nothing
        raise
    for job in jobs:
        ctx.enqueue(job.id)
    log.info("batch created", extra={"batch_id": batch_id, "accepted": len(jobs),
                                     "rejected": len(unpacked.rejected)})
    return _answer(ctx, batch, response)


@router.get(
    "/batches/{batch_id}",
    response_model=BatchStatus,
    summary="Counts per state and the status of every SKU",
    responses=error_responses("unauthorized", "batch_not_found", "rate_limited"),
)
def get_batch(batch_id: str, ctx: Ctx, key: Key) -> BatchStatus:
    batch = _batch_or_404(ctx, key, batch_id)
    return batch_status(batch, ctx.store.batch_jobs(batch.id))


@router.get(
    "/batches/{batch_id}/results",
    summary="A streamed ZIP of the finished outputs named by SKU, with manifest.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}},
                     "description": "outputs named <sku>.<ext>; manifest.csv lists every "
                     "item: sku, status, error_code, file, then a succeeded item's "
                     f"attributes: {', '.join(ATTRIBUTE_COLUMNS)} (colours joined by /)"},
               **error_responses("unauthorized", "batch_not_found", "rate_limited")},
)
def get_batch_results(batch_id: str, ctx: Ctx, key: Key) -> StreamingResponse:
    batch = _batch_or_404(ctx, key, batch_id)
    jobs = ctx.store.batch_jobs(batch.id)
    return StreamingResponse(
        stream_results(ctx, batch, jobs), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="batch-{batch.id}.zip"'},
    )
