"""The HTTP API: validate, store, enqueue, answer. No torch is ever imported here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from models.compose import parse_background
from models.io import ImageLimits, IngestError, validate_image
from models.pipeline import pipeline_names
from service.context import ServiceContext, get_context
from service.errors import ApiError, error_response, error_responses, install_error_handlers
from service.logs import log_context
from service.metrics import JobStoreCollector, render
from service.middleware import RequestObservability
from service.queue import ping_broker
from service.reconciler import reconcile_forever
from service.schemas import (
    AssetCreated,
    AssetLinks,
    AssetOptions,
    AssetStatus,
    Health,
    InputInfo,
    JobError,
    OutputFormat,
    PipelineList,
    Progress,
    Readiness,
)
from service.settings import Settings, get_settings
from service.store import JobView, new_job_id

log = logging.getLogger("flatlay.api")
WEB_DIR = Path(__file__).parent / "web"
Ctx = Annotated[ServiceContext, Depends(get_context)]


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
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links=_links(job.id),
    )


def _job_or_404(ctx: ServiceContext, job_id: str) -> JobView:
    job = ctx.store.get(job_id) if len(job_id) <= 64 else None
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

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
        "`GET /assets/{id}/result`. Every error body is `{\"error\": {\"code\", \"message\", "
        "\"field\"?}}`; the codes are listed per route.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestObservability)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    store_registry = CollectorRegistry(auto_describe=False)
    store_registry.register(JobStoreCollector(lambda: app.state.ctx))
    limits = ImageLimits(settings.max_upload_bytes, settings.max_pixels, settings.min_image_side)

    @app.post(
        "/assets",
        status_code=202,
        response_model=AssetCreated,
        summary="Submit one garment photo",
        responses=error_responses(
            "validation_error",
            "unknown_pipeline",
            "empty_file",
            "corrupt_image",
            "image_too_small",
            "file_too_large",
            "image_too_many_pixels",
            "unsupported_media_type",
        ),
    )
    def create_asset(
        ctx: Ctx,
        response: Response,
        file: Annotated[UploadFile, File(description="JPEG, PNG or WebP photo")],
        pipeline: Annotated[str | None, Form(description="pipeline name")] = None,
        output_size: Annotated[int, Form(ge=256, le=2048, description="canvas side, px")] = 1024,
        background: Annotated[str, Form(description="'transparent' or a hex colour")] = "#ffffff",
        format: Annotated[OutputFormat, Form(description="output image format")] = "png",
        seed: Annotated[int | None, Form(ge=0, le=2**32 - 1)] = None,
    ) -> AssetCreated:
        pipeline = pipeline or settings.default_pipeline
        if pipeline not in pipeline_names():
            raise ApiError(
                "unknown_pipeline",
                f"unknown pipeline {pipeline!r}; available: {', '.join(pipeline_names())}",
                "pipeline",
            )
        try:
            bg = parse_background(background)
        except ValueError as exc:
            raise ApiError("validation_error", str(exc), "background") from None
        if bg is None and format == "jpeg":
            raise ApiError(
                "validation_error",
                "JPEG has no alpha channel: use format png or webp for a transparent background",
                "background",
            )
        data = _read_upload(file, settings.max_upload_bytes)
        try:
            info = validate_image(data, limits)
        except IngestError as exc:
            raise ApiError(exc.code, exc.message, "file") from None

        job_id = new_job_id()
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[info.format]
        input_blob = f"assets/{job_id}/input.{ext}"
        ctx.blobs.put(input_blob, data)
        options = {"output_size": output_size, "background": background, "format": format,
                   "seed": seed}
        input_meta = {"filename": file.filename, "content_type": info.content_type,
                      "width": info.width, "height": info.height, "bytes": info.bytes}
        with log_context(job_id=job_id):
            job = ctx.store.create_job(
                job_id=job_id, pipeline=pipeline, options=options,
                input_blob=input_blob, input_meta=input_meta,
            )
            log.info("asset created", extra={"pipeline": pipeline})
            ctx.enqueue(job_id)
        response.headers["Location"] = f"/assets/{job_id}"
        return AssetCreated(
            id=job.id, status="queued", created_at=job.created_at, links=_links(job.id)
        )

    @app.get(
        "/assets/{asset_id}",
        response_model=AssetStatus,
        summary="Status, progress and timings of one asset",
        responses=error_responses("asset_not_found"),
    )
    def get_asset(asset_id: str, ctx: Ctx) -> AssetStatus:
        return _status_of(_job_or_404(ctx, asset_id))

    @app.get(
        "/assets/{asset_id}/result",
        summary="The finished flat-lay image",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
                  "description": "the image, in the requested format"},
            **error_responses("asset_not_found", "asset_not_ready", "asset_failed",
                              "asset_canceled"),
        },
    )
    def get_result(asset_id: str, ctx: Ctx) -> Response:
        job = _job_or_404(ctx, asset_id)
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
        data = ctx.blobs.get(job.result_blob)  # type: ignore[arg-type]
        ext = job.options["format"].replace("jpeg", "jpg")
        return Response(
            content=data,
            media_type=job.result_content_type,
            headers={"Content-Disposition": f'inline; filename="{job.id}.{ext}"'},
        )

    @app.get("/pipelines", response_model=PipelineList, summary="Registered pipelines")
    def list_pipelines() -> PipelineList:
        return PipelineList(default=settings.default_pipeline, pipelines=pipeline_names())

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
        summary="Job store, blob store and broker are reachable",
        responses={503: {"model": Readiness, "description": "a dependency is unreachable"}},
    )
    def readyz(ctx: Ctx) -> Response:
        checks: dict[str, str] = {}
        for name, check in (
            ("job_store", ctx.store.ping),
            ("blob_store", ctx.blobs.ping),
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
