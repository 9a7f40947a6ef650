"""`/healthz`, `/readyz` and `/metrics`: what an orchestrator and Prometheus ask of the
process. None of them needs a key."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from service.blobs import probe_write
from service.context import ServiceContext
from service.deps import Ctx
from service.metrics import JobStoreCollector, render
from service.queue import ping_broker
from service.schemas import Health, Readiness

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics (every series is named flatlay_…)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(ctx: Ctx) -> Response:
    # The job store's series are read at scrape time, through this app's context.
    store = CollectorRegistry(auto_describe=False)
    store.register(JobStoreCollector(lambda: ctx))
    return Response(render(store), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


def _checks(ctx: ServiceContext) -> dict[str, Callable[[], object]]:
    return {
        "job_store": ctx.store.ping,
        "blob_store": ctx.blobs.ping,
        "blob_store_write": lambda: probe_write(ctx.blobs),
        "broker": lambda: ping_broker(ctx.celery, ctx.settings),
    }


def _outcome(check: Callable[[], object]) -> str:
    try:
        check()
    except Exception as exc:  # any failure means not ready; say which and why
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Job store, blob store and broker are reachable, and the blob store takes "
    "writes (`blob_store_write`: a probe blob written, read back and deleted)",
    responses={503: {"model": Readiness, "description": "a dependency is unreachable"}},
)
def readyz(ctx: Ctx) -> Response:
    checks = {name: _outcome(check) for name, check in _checks(ctx).items()}
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
