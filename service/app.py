"""The HTTP API put together: its lifespan (the service context and the reconciler), the
middleware, the web page and the routers, one module a resource (service.assets,
service.batches, service.structures, service.deliveries, service.choices, service.health),
whose routes validate, store, enqueue and answer. No torch is ever imported here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.assets import router as assets_router
from service.batches import router as batches_router
from service.body_guard import BodyGuard, body_bound
from service.choices import router as choices_router
from service.context import ServiceContext, register_extra_pipelines
from service.deliveries import router as deliveries_router
from service.errors import install_error_handlers
from service.health import router as health_router
from service.middleware import RequestObservability
from service.reconciler import reconcile_forever
from service.settings import Settings, get_settings
from service.structures import router as structures_router

WEB_DIR = Path(__file__).parent / "web"
# In this order in the OpenAPI document.
ROUTERS = (batches_router, structures_router, assets_router, deliveries_router,
           choices_router, health_router)


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
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def web_page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app
