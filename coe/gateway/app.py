"""The app factory: build the runtime in the lifespan, mount the endpoint modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI

from coe import __version__
from coe.config import Settings
from coe.console import install_console
from coe.experts.schema import CoeConfig
from coe.gateway import admin_api, batch_api, chat_api, files_api, models_api, route_api
from coe.gateway.auth import client_key
from coe.gateway.middleware import RequestContext
from coe.observability import Metrics
from coe.observability.metrics import checked_metrics_token
from coe.runtime import build_runtime
from coe.supervisor import Supervisor, start_gateway_loops
from coe.web.deps import get_runtime
from coe.web.errors import install_error_handlers
from coe.web.metrics import install_metrics


def create_app(
    settings: Settings | None = None,
    config: CoeConfig | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway over a runtime built in the lifespan; `transport` is for in-process tests
    (expert calls go to ASGI apps instead of sockets)."""
    settings = settings or Settings()
    settings.checked_admin_token()  # refuse a placeholder token before anything starts
    metrics_token = checked_metrics_token(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await build_runtime(settings, config, metrics=metrics, transport=transport)
        app.state.runtime = runtime
        try:
            async with Supervisor() as loops:
                start_gateway_loops(loops, runtime)
                yield
        finally:
            await runtime.close()

    app = FastAPI(title="coe", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(
        RequestContext,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.batch_max_bytes,
        max_header_bytes=settings.max_header_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_in_flight=settings.max_in_flight,
    )
    keyed = [Depends(client_key)]
    app.include_router(chat_api.router, dependencies=keyed)
    app.include_router(models_api.router, dependencies=keyed)
    app.include_router(route_api.router, dependencies=keyed)
    app.include_router(files_api.router)  # these two check keys per call (files_api.caller)
    app.include_router(batch_api.router)
    app.include_router(admin_api.router)
    install_console(app)  # /ui: the operators' console

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    install_metrics(
        app, lambda request: get_runtime(request).metrics.render(), metrics_token, in_schema=False
    )

    return app
