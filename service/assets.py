"""`/assets`: submit one photo, follow it, cancel or delete it, download its result and its
side outputs. Each route validates, stores, enqueues and answers; the steps are below it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile

from models.io import IngestError, validate_image
from models.pipeline import SIDE_OUTPUTS
from models.presets import DEFAULT_PRESET
from service.auth import Principal
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
from service.errors import ApiError, error_response, error_responses
from service.logs import log_context
from service.options import OptionForm, resolve_options
from service.outputs import (
    delete_job_blobs,
    file_ext,
    input_key,
    input_meta,
    side_output_url,
)
from service.rows import Idempotency, IdempotencyConflict, JobView
from service.schemas import (
    AssetCreated,
    AssetLinks,
    AssetOptions,
    AssetStatus,
    InputInfo,
    JobError,
    Progress,
    review_suggested,
)
from service.settings import Settings
from service.store import new_job_id
from service.webhooks import complete_batch

log = logging.getLogger("flatlay.api")
router = APIRouter()


# --- Views ------------------------------------------------------------------------------------


def _links(job_id: str) -> AssetLinks:
    return AssetLinks(self=f"/assets/{job_id}", result=f"/assets/{job_id}/result")


def _status_of(job: JobView, review_below: float) -> AssetStatus:
    error = None
    if job.error_code:
        error = JobError(code=job.error_code, message=job.error_message or "")
    return AssetStatus(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        pipeline=job.pipeline,
        options=AssetOptions(**job.options),
        progress=Progress(stage=job.stage, percent=job.percent),
        timings=job.timings or {},
        error=error,
        input=InputInfo(**job.input_meta),
        attempts=job.attempts,
        batch_id=job.batch_id,
        sku=job.sku,
        side_outputs=({name: side_output_url(job.id, name) for name in job.side_outputs}
                      if job.status == "succeeded" and job.side_outputs else {}),
        compliance=job.compliance if job.status == "succeeded" else None,
        attributes=job.attributes if job.status == "succeeded" else None,
        review_suggested=(review_suggested(job.attributes, review_below)
                          if job.status == "succeeded" else None),
        expired_at=job.expired_at,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links=_links(job.id),
    )


def _created(response: Response, job: JobView, replayed: bool = False) -> AssetCreated:
    located(response, f"/assets/{job.id}", replayed)
    return AssetCreated(id=job.id, status=job.status, created_at=job.created_at,  # type: ignore[arg-type]
                        links=_links(job.id))


def _job_or_404(ctx: ServiceContext, key: Principal, job_id: str) -> JobView:
    return owned(ctx.store.get, job_id, key, "asset_not_found", "asset")


def _inline(data: bytes, media_type: str | None, filename: str) -> Response:
    return Response(content=data, media_type=media_type,
                    headers={"Content-Disposition": f'inline; filename="{filename}"'})


# --- Submitting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Photo:
    """An upload, validated and stored as the input of the job it becomes."""

    job_id: str
    input_blob: str
    input_meta: dict[str, Any]


def _read_upload(file: UploadFile, max_bytes: int) -> bytes:
    data = file.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(
            "file_too_large", f"the file is larger than the limit of {max_bytes} bytes", "file"
        )
    return data


def _store_photo(ctx: ServiceContext, data: bytes, filename: str | None) -> _Photo:
    try:
        info = validate_image(data, ctx.settings.image_limits())
    except IngestError as exc:
        raise ApiError(exc.code, exc.message, "file") from None
    job_id = new_job_id()
    blob = input_key(job_id, info.format)
    ctx.blobs.put(blob, data)
    return _Photo(job_id, blob, input_meta(info, filename=filename))


def _create_job(ctx: ServiceContext, key: Principal, photo: _Photo, pipeline: str,
                options: dict[str, Any], hook: str | None,
                idem: Idempotency | None) -> tuple[JobView, bool]:
    """Store the job and enqueue it; (the job, whether a twin request made it instead)."""
    with log_context(job_id=photo.job_id):
        try:
            job = ctx.store.create_job(
                job_id=photo.job_id, tenant_id=key.tenant_id, pipeline=pipeline,
                options=options, input_blob=photo.input_blob, input_meta=photo.input_meta,
                idempotency=idem, webhook_url=hook, key_id=key.key_id,
            )
        except IdempotencyConflict as conflict:
            twin = lost_race(ctx, key, idem, conflict, [photo.input_blob])
            return _job_or_404(ctx, key, twin), True
        except Exception:
            discard_stored(ctx, [photo.input_blob])  # no row names it: keep nothing
            raise
        log.info("asset created", extra={"pipeline": pipeline})
        ctx.enqueue(job.id)
    return job, False


@router.post(
    "/assets",
    status_code=202,
    response_model=AssetCreated,
    summary="Submit one garment photo",
    description="Options not given come from the preset (`preset`, default "
    f"`{DEFAULT_PRESET}`; see `GET /presets`). A format or size that the preset does "
    "not allow is accepted: the job succeeds and its `compliance` check fails. "
    "`structure` (JSON text) lays the garment out in a given structure instead of a "
    "retrieved one; an invalid one answers 422 `invalid_structure` with `field` naming "
    "the point (e.g. `structure.landmarks[3]`). Options are stored with the job, so a "
    "retry reproduces it.",
    responses=error_responses(
        "unauthorized",
        "validation_error",
        "invalid_structure",
        "unknown_pipeline",
        "empty_file",
        "corrupt_image",
        "image_too_small",
        "file_too_large",
        "payload_too_large",
        "request_timeout",
        "image_too_many_pixels",
        "unsupported_media_type",
        "idempotency_key_reused",
        "rate_limited",
        "storage_unavailable",
    ),
)
def create_asset(
    ctx: Ctx,
    key: Key,
    response: Response,
    fields: OptionForm,
    file: Annotated[UploadFile, File(description="JPEG, PNG or WebP photo")],
    idempotency_key: IdempotencyKey = None,
    webhook_url: Annotated[str | None, Form(description="receives asset.succeeded and "
                                            "asset.failed (default: the key's)")] = None,
) -> AssetCreated:
    s = ctx.settings
    pipeline, options = resolve_options(fields.pipeline, fields.given, s.default_pipeline)
    hook = request_webhook_target(webhook_url, key, s)
    asked = {"pipeline": pipeline, "filename": file.filename, "webhook_url": hook, **options}
    # At most FLATLAY_INGEST_CONCURRENCY uploads are in memory at once (bytes and a full
    # decode, up to max_upload_bytes + 4 x max_pixels each); the rest wait on their
    # spooled files, so many large uploads cannot add up.
    with ctx.ingest_slots:
        data = _read_upload(file, s.max_upload_bytes)
        idem = request_idempotency(idempotency_key, "assets", asked, [data])
        if (earlier := replayed_or_conflict(ctx, key, idem)) is not None:
            return _created(response, _job_or_404(ctx, key, earlier), replayed=True)
        photo = _store_photo(ctx, data, file.filename)
    del data  # stored: not held through the job store's write
    job, replayed = _create_job(ctx, key, photo, pipeline, options, hook, idem)
    return _created(response, job, replayed)


# --- Following, stopping, deleting ------------------------------------------------------------


def _stop(ctx: ServiceContext, job: JobView) -> bool:
    """Cancel the job if it is active; a running one stops at its next stage boundary (its
    next progress update finds the row canceled), a waiting message is dropped."""
    if not ctx.store.cancel(job.id):
        return False
    ctx.revoke(job.id)
    return True


@router.get(
    "/assets/{asset_id}",
    response_model=AssetStatus,
    summary="Status, progress and timings of one asset",
    responses=error_responses("unauthorized", "asset_not_found", "rate_limited"),
)
def get_asset(asset_id: str, ctx: Ctx, key: Key) -> AssetStatus:
    return _status_of(_job_or_404(ctx, key, asset_id), ctx.settings.review_confidence)


@router.post(
    "/assets/{asset_id}/cancel",
    response_model=AssetStatus,
    summary="Cancel a queued or running asset: a running one stops at its next stage "
    "boundary and keeps no result; its progress says the stage it stopped at",
    responses=error_responses("unauthorized", "asset_not_found", "asset_not_cancelable",
                              "rate_limited"),
)
def cancel_asset(asset_id: str, ctx: Ctx, key: Key) -> AssetStatus:
    job = _job_or_404(ctx, key, asset_id)
    if not _stop(ctx, job):
        job = _job_or_404(ctx, key, asset_id)  # canceled meanwhile is no error
        if job.status != "canceled":
            raise ApiError("asset_not_cancelable", f"asset {job.id} already {job.status}")
    if job.batch_id is not None:
        complete_batch(ctx.store, ctx.send_webhook, job.batch_id)
    log.info("asset canceled", extra={"job_id": job.id})
    return _status_of(_job_or_404(ctx, key, asset_id), ctx.settings.review_confidence)


@router.delete(
    "/assets/{asset_id}",
    status_code=204,
    response_class=Response,
    summary="Delete an asset: cancel it if it is active, remove its input, result and "
    "side outputs",
    responses=error_responses("unauthorized", "asset_not_found", "rate_limited"),
)
def delete_asset(asset_id: str, ctx: Ctx, key: Key) -> Response:
    job = _job_or_404(ctx, key, asset_id)
    _stop(ctx, job)
    delete_job_blobs(ctx.blobs, job)
    ctx.store.delete_job(job.id)
    log.info("asset deleted", extra={"job_id": job.id})
    return Response(status_code=204)


# --- Results and side outputs -----------------------------------------------------------------


def _not_deliverable(job: JobView, settings: Settings) -> Response | None:
    """The error answer for outputs of a job that has none to give (yet, or any more)."""
    if job.status in ("queued", "running"):
        return error_response(
            "asset_not_ready",
            f"asset {job.id} is {job.status} ({job.percent}%); poll /assets/{job.id}",
            headers={"Retry-After": "1"},
        )
    if job.status == "failed":
        return error_response(
            "asset_failed", f"asset {job.id} failed: {job.error_code}: {job.error_message}"
        )
    if job.status == "canceled":
        return error_response("asset_canceled", f"asset {job.id} was canceled")
    if job.expired_at is not None:
        return error_response(
            "asset_expired", f"asset {job.id}'s result was removed at "
            f"{job.expired_at.isoformat()} (retention {settings.result_retention_s:g} s)")
    return None


def _unknown_output(job: JobView, name: str) -> Response:
    if job.status == "succeeded":
        have = ", ".join(sorted(job.side_outputs or {})) or "none"
        listed = f"this asset has: {have}"
    else:
        listed = f"side outputs are {', '.join(SIDE_OUTPUTS)} (those the pipeline gives)"
    return error_response("unknown_output",
                          f"asset {job.id} has no side output {name[:64]!r}; {listed}",
                          "name")


def _side_output(ctx: ServiceContext, job: JobView, name: str) -> Response:
    """The side output, or why there is none: an unknown name is told apart from an asset
    that has no outputs (yet, or any more) and from one whose pipeline gave no such one."""
    if name not in SIDE_OUTPUTS:
        return _unknown_output(job, name)
    if (refusal := _not_deliverable(job, ctx.settings)) is not None:
        return refusal
    available = job.side_outputs or {}
    if name not in available:
        return _unknown_output(job, name)
    try:
        data = ctx.blobs.get(available[name])
    except KeyError:  # removed under us (deleted or expired a moment ago)
        return error_response("asset_expired", f"asset {job.id}'s {name} was removed")
    ext, content_type = SIDE_OUTPUTS[name]
    return _inline(data, content_type, f"{job.id}.{name}.{ext}")


@router.get(
    "/assets/{asset_id}/result",
    summary="The finished flat-lay image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
              "description": "the image, in the requested format"},
        **error_responses("unauthorized", "asset_not_found", "asset_not_ready",
                          "asset_failed", "asset_canceled", "asset_expired",
                          "rate_limited"),
    },
)
def get_result(asset_id: str, ctx: Ctx, key: Key) -> Response:
    job = _job_or_404(ctx, key, asset_id)
    if (refusal := _not_deliverable(job, ctx.settings)) is not None:
        return refusal
    data = ctx.blobs.get(job.result_blob)  # type: ignore[arg-type]
    return _inline(data, job.result_content_type, f"{job.id}.{file_ext(job.options['format'])}")


@router.get(
    "/assets/{asset_id}/outputs/{name}",
    summary="A side output of a finished asset: mask, landmarks, neighbours or overlay",
    description="Side outputs explain a result: `mask` (PNG, the garment's alpha on the "
    "canvas), `landmarks` (JSON: category, canonical landmarks, their names and the "
    "canvas landmarks; send it back as `structure` to reproduce or edit the layout), "
    "`neighbours` (JSON: retrieved bank entries and their SLLE weights), `overlay` (PNG, "
    "the structure drawn over the result). A pipeline gives those it can; the asset's "
    "status lists them under `side_outputs`.",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "application/json": {}},
              "description": "the side output"},
        **error_responses("unauthorized", "asset_not_found", "unknown_output",
                          "asset_not_ready", "asset_failed", "asset_canceled",
                          "asset_expired", "rate_limited"),
    },
)
def get_output(asset_id: str, name: str, ctx: Ctx, key: Key) -> Response:
    return _side_output(ctx, _job_or_404(ctx, key, asset_id), name)
