"""The app factory: build services in the lifespan, mount the endpoint modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from coe import __version__
from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import chat_api, models_api, route_api
from coe.gateway.errors import install_error_handlers
from coe.gateway.services import build_services


def create_app(settings: Settings | None = None, config: CoeConfig | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings, config)
        app.state.services = services
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="coe", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(chat_api.router)
    app.include_router(models_api.router)
    app.include_router(route_api.router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
