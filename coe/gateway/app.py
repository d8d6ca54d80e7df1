"""The app factory: build services in the lifespan, mount the endpoint modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Response

from coe import __version__
from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import admin_api, batch_api, chat_api, models_api, route_api
from coe.gateway.auth import client_key
from coe.gateway.deps import ServicesDep
from coe.gateway.errors import install_error_handlers
from coe.gateway.middleware import RequestContext
from coe.gateway.openapi import install_openapi
from coe.gateway.services import build_services
from coe.observability import Metrics


def create_app(settings: Settings | None = None, config: CoeConfig | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.checked_admin_token()  # refuse a placeholder token before anything starts
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings, config, metrics=metrics)
        app.state.services = services
        services.start_background()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="coe", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(
        RequestContext,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.batch_max_bytes,
        max_header_bytes=settings.max_header_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    keyed = [Depends(client_key)]
    app.include_router(chat_api.router, dependencies=keyed)
    app.include_router(models_api.router, dependencies=keyed)
    app.include_router(route_api.router, dependencies=keyed)
    app.include_router(batch_api.router, dependencies=keyed)
    app.include_router(admin_api.router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(services: ServicesDep) -> Response:
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
