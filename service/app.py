"""The HTTP API: validate, store, enqueue, answer. No torch is ever imported here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from models.io import ImageLimits, IngestError, validate_image
from models.pipeline import SIDE_OUTPUTS, pipeline_names
from models.presets import DEFAULT_PRESET, PRESETS
from service.auth import Principal
from service.batches import router as batches_router
from service.blobs import probe_write
from service.body_guard import BodyGuard, body_bound
from service.context import ServiceContext, register_extra_pipelines
from service.deps import (
    Ctx,
    IdempotencyKey,
    Key,
    limited_key,
    replayed_or_conflict,
    request_fingerprint,
    request_webhook_target,
)
from service.errors import ApiError, error_response, error_responses, install_error_handlers
from service.logs import log_context
from service.metrics import JobStoreCollector, render
from service.middleware import RequestObservability
from service.options import OptionForm, resolve_options
from service.outputs import job_blob_keys, result_ext, side_output_url
from service.queue import ping_broker
from service.reconciler import reconcile_forever
from service.rows import DeliveryView, Idempotency, IdempotencyConflict, JobView
from service.schemas import (
    AssetCreated,
    AssetLinks,
    AssetOptions,
    AssetStatus,
    DeliveryAttempt,
    Health,
    InputInfo,
    JobError,
    PipelineList,
    PresetInfo,
    PresetList,
    Progress,
    Readiness,
    WebhookDelivery,
    WebhookDeliveryList,
)
from service.settings import Settings, get_settings
from service.store import new_job_id
from service.structures import router as structures_router
from service.webhooks import complete_batch

log = logging.getLogger("flatlay.api")
WEB_DIR = Path(__file__).parent / "web"


def _links(job_id: str) -> AssetLinks:
    return AssetLinks(self=f"/assets/{job_id}", result=f"/assets/{job_id}/result")


def _status_of(job: JobView) -> AssetStatus:
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
        expired_at=job.expired_at,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links=_links(job.id),
    )


def _job_or_404(ctx: ServiceContext, key: Principal, job_id: str) -> JobView:
    # Another tenant's asset is answered exactly like one that does not exist.
    job = ctx.store.get(job_id, tenant_id=key.tenant_id) if len(job_id) <= 64 else None
    if job is None:
        raise ApiError("asset_not_found", f"no asset with id {job_id!r}")
    return job


def _read_upload(file: UploadFile, max_bytes: int) -> bytes:
    data = file.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(
            "file_too_large", f"the file is larger than the limit of {max_bytes} bytes", "file"
        )
    return data


def _delivery(d: DeliveryView) -> WebhookDelivery:
    return WebhookDelivery(
        id=d.id, event=d.event, url=d.url, status=d.status,  # type: ignore[arg-type]
        asset_id=d.asset_id, batch_id=d.batch_id,
        attempts=[DeliveryAttempt(**a) for a in d.attempts], next_attempt_at=d.next_attempt_at,
        created_at=d.created_at, finished_at=d.finished_at, payload=d.payload,
    )


def _created(response: Response, job: JobView, replayed: bool = False) -> AssetCreated:
    response.headers["Location"] = f"/assets/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return AssetCreated(id=job.id, status=job.status, created_at=job.created_at,  # type: ignore[arg-type]
                        links=_links(job.id))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_auth_bind()
    register_extra_pipelines(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = ServiceContext.build(settings)
        app.state.ctx = ctx
        reconciler = asyncio.create_task(reconcile_forever(ctx))
        try:
            yield
        finally:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
            ctx.close()

    app = FastAPI(
        title="Flatlay",
        version="0.1.0",
        description="Turns in-the-wild garment photos into standardized flat-lay catalog "
        "images. Send a photo to `POST /assets`, poll `GET /assets/{id}`, download "
        "`GET /assets/{id}/result` and its side outputs `GET /assets/{id}/outputs/{name}` "
        "(mask, landmarks, neighbours, overlay: those the pipeline produced). A preset "
        "(`GET /presets`) gives the defaults of size, background and format; every result "
        "is checked against its preset (`compliance` in the status). Every error body is "
        "`{\"error\": {\"code\", \"message\", \"field\"?}}`; the codes are listed per route.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Added first, so it runs inside the observability middleware (its refusals are logged).
    app.add_middleware(BodyGuard, bound=body_bound(settings), timeout_s=settings.body_timeout_s,
                       min_rate=settings.body_min_rate)
    app.add_middleware(RequestObservability)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    store_registry = CollectorRegistry(auto_describe=False)
    store_registry.register(JobStoreCollector(lambda: app.state.ctx))
    limits = ImageLimits(settings.max_upload_bytes, settings.max_pixels, settings.min_image_side)
    ingest_slots = threading.BoundedSemaphore(settings.ingest_concurrency)
    app.include_router(batches_router)
    app.include_router(structures_router)

    @app.post(
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
        pipeline, options = resolve_options(fields.pipeline, fields.given,
                                            settings.default_pipeline)
        hook = request_webhook_target(webhook_url, key, settings)
        # At most FLATLAY_INGEST_CONCURRENCY uploads are in memory at once (bytes and a full
        # decode, up to max_upload_bytes + 4 x max_pixels each); the rest wait on their
        # spooled files, so many large uploads cannot add up.
        with ingest_slots:
            data = _read_upload(file, settings.max_upload_bytes)
            idem = None
            if idempotency_key is not None:
                idem = Idempotency(idempotency_key, request_fingerprint(
                    "assets", {"pipeline": pipeline, "filename": file.filename,
                               "webhook_url": hook, **options}, [data]))
                if (earlier := replayed_or_conflict(ctx, key, idem)) is not None:
                    return _created(response, _job_or_404(ctx, key, earlier), replayed=True)
            try:
                info = validate_image(data, limits)
            except IngestError as exc:
                raise ApiError(exc.code, exc.message, "file") from None

            job_id = new_job_id()
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[info.format]
            input_blob = f"assets/{job_id}/input.{ext}"
            ctx.blobs.put(input_blob, data)
        del data  # stored: not held through the job store's write
        input_meta = {"filename": file.filename, "content_type": info.content_type,
                      "width": info.width, "height": info.height, "bytes": info.bytes}
        with log_context(job_id=job_id):
            try:
                job = ctx.store.create_job(
                    job_id=job_id, tenant_id=key.tenant_id, pipeline=pipeline,
                    options=options, input_blob=input_blob, input_meta=input_meta,
                    idempotency=idem, webhook_url=hook, key_id=key.key_id,
                )
            except IdempotencyConflict:
                # A twin request with the same key won the race: answer as it did.
                ctx.blobs.delete(input_blob)
                assert idem is not None
                earlier = replayed_or_conflict(ctx, key, idem)
                return _created(response, _job_or_404(ctx, key, earlier or ""), replayed=True)
            log.info("asset created", extra={"pipeline": pipeline})
            ctx.enqueue(job_id)
        return _created(response, job)

    @app.get(
        "/assets/{asset_id}",
        response_model=AssetStatus,
        summary="Status, progress and timings of one asset",
        responses=error_responses("unauthorized", "asset_not_found", "rate_limited"),
    )
    def get_asset(asset_id: str, ctx: Ctx, key: Key) -> AssetStatus:
        return _status_of(_job_or_404(ctx, key, asset_id))

    @app.post(
        "/assets/{asset_id}/cancel",
        response_model=AssetStatus,
        summary="Cancel a queued or running asset: a running one stops at its next stage "
        "boundary and keeps no result; its progress says the stage it stopped at",
        responses=error_responses("unauthorized", "asset_not_found", "asset_not_cancelable",
                                  "rate_limited"),
    )
    def cancel_asset(asset_id: str, ctx: Ctx, key: Key) -> AssetStatus:
        job = _job_or_404(ctx, key, asset_id)
        if ctx.store.cancel(job.id):
            # The worker running it stops by itself (its next progress update finds the
            # row canceled); a message still waiting is dropped by the workers.
            ctx.revoke(job.id)
        else:
            job = _job_or_404(ctx, key, asset_id)
            if job.status != "canceled":
                raise ApiError("asset_not_cancelable", f"asset {job.id} already {job.status}")
        if job.batch_id is not None:
            complete_batch(ctx.store, ctx.send_webhook, job.batch_id)
        log.info("asset canceled", extra={"job_id": job.id})
        return _status_of(_job_or_404(ctx, key, asset_id))

    @app.delete(
        "/assets/{asset_id}",
        status_code=204,
        response_class=Response,
        summary="Delete an asset: cancel it if it is active, remove its input, result and "
        "side outputs",
        responses=error_responses("unauthorized", "asset_not_found", "rate_limited"),
    )
    def delete_asset(asset_id: str, ctx: Ctx, key: Key) -> Response:
        job = _job_or_404(ctx, key, asset_id)
        if ctx.store.cancel(job.id):  # a running one stops at its next stage boundary
            ctx.revoke(job.id)
        for blob in job_blob_keys(job):
            ctx.blobs.delete(blob)
        ctx.store.delete_job(job.id)
        log.info("asset deleted", extra={"job_id": job.id})
        return Response(status_code=204)

    @app.get(
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
        if (refusal := _not_deliverable(job)) is not None:
            return refusal
        data = ctx.blobs.get(job.result_blob)  # type: ignore[arg-type]
        ext = result_ext(job.options["format"])
        return Response(
            content=data,
            media_type=job.result_content_type,
            headers={"Content-Disposition": f'inline; filename="{job.id}.{ext}"'},
        )

    def _not_deliverable(job: JobView) -> Response | None:
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

    @app.get(
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
        job = _job_or_404(ctx, key, asset_id)
        if name not in SIDE_OUTPUTS:
            return _unknown_output(job, name)
        if (refusal := _not_deliverable(job)) is not None:
            return refusal
        available = job.side_outputs or {}
        if name not in available:
            return _unknown_output(job, name)
        try:
            data = ctx.blobs.get(available[name])
        except KeyError:  # removed under us (deleted or expired a moment ago)
            return error_response("asset_expired", f"asset {job.id}'s {name} was removed")
        ext, content_type = SIDE_OUTPUTS[name]
        return Response(
            content=data, media_type=content_type,
            headers={"Content-Disposition": f'inline; filename="{job.id}.{name}.{ext}"'},
        )

    @app.get(
        "/webhooks/deliveries",
        response_model=WebhookDeliveryList,
        summary="Webhook deliveries and their attempts (newest first, at most 100)",
        responses=error_responses("unauthorized", "validation_error", "rate_limited"),
    )
    def list_deliveries(
        ctx: Ctx, key: Key,
        asset_id: Annotated[str | None, Query(max_length=64)] = None,
        batch_id: Annotated[str | None, Query(max_length=64)] = None,
    ) -> WebhookDeliveryList:
        found = ctx.store.list_deliveries(key.tenant_id, asset_id=asset_id, batch_id=batch_id)
        return WebhookDeliveryList(deliveries=[_delivery(d) for d in found])

    @app.get(
        "/webhooks/deliveries/{delivery_id}",
        response_model=WebhookDelivery,
        summary="One webhook delivery and its attempts",
        responses=error_responses("unauthorized", "delivery_not_found", "rate_limited"),
    )
    def get_delivery(delivery_id: str, ctx: Ctx, key: Key) -> WebhookDelivery:
        found = (ctx.store.get_delivery(delivery_id, tenant_id=key.tenant_id)
                 if len(delivery_id) <= 64 else None)
        if found is None:
            raise ApiError("delivery_not_found", f"no webhook delivery with id {delivery_id!r}")
        return _delivery(found)

    @app.get("/pipelines", response_model=PipelineList, summary="Registered pipelines",
             responses=error_responses("unauthorized", "rate_limited"),
             dependencies=[Depends(limited_key)])
    def list_pipelines() -> PipelineList:
        return PipelineList(default=settings.default_pipeline, pipelines=pipeline_names())

    @app.get("/presets", response_model=PresetList,
             summary="Output presets: default size, background and formats, and what the "
             "compliance check holds a result to",
             responses=error_responses("unauthorized", "rate_limited"),
             dependencies=[Depends(limited_key)])
    def list_presets() -> PresetList:
        return PresetList(default=DEFAULT_PRESET, presets=[
            PresetInfo(name=p.name, size=p.size, background=p.background,
                       formats=list(p.formats), min_fill=p.min_fill,
                       description=p.description)
            for p in PRESETS.values()])

    @app.get("/", include_in_schema=False)
    def web_page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get(
        "/metrics",
        summary="Prometheus metrics (every series is named flatlay_…)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def metrics() -> Response:
        return Response(render(store_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        summary="Job store, blob store and broker are reachable, and the blob store takes "
        "writes (`blob_store_write`: a probe blob written, read back and deleted)",
        responses={503: {"model": Readiness, "description": "a dependency is unreachable"}},
    )
    def readyz(ctx: Ctx) -> Response:
        checks: dict[str, str] = {}
        for name, check in (
            ("job_store", ctx.store.ping),
            ("blob_store", ctx.blobs.ping),
            ("blob_store_write", lambda: probe_write(ctx.blobs)),
            ("broker", lambda: ping_broker(ctx.celery, settings)),
        ):
            try:
                check()
                checks[name] = "ok"
            except Exception as exc:  # any failure means not ready; say which and why
                checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(status="ready" if ready else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    return app
