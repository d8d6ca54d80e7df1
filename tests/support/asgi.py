"""The in-process tier: the gateway and fake experts as ASGI apps, reached with no socket.

`httpx.ASGITransport` buffers a whole response and applies no httpx timeout, so tests of
timeouts, hangs, broken or slow streams and other socket behaviour stay on real servers
(`tests.support.server.ServedApp`, `coe.testing.FakeUpstream`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.testing import Fault, make_fake_app
from coe.testing.fake_upstream import UpstreamState

GATEWAY_URL = "http://gateway.test"


class HostRouter(httpx.AsyncBaseTransport):
    """Sends each request to the ASGI app mounted for its host. Any other host refuses the
    connection, as a dead port would, so fallback after a connection error needs no socket."""

    def __init__(self) -> None:
        self._apps: dict[str, httpx.ASGITransport] = {}

    def mount(self, base_url: str, app: Any) -> HostRouter:
        self._apps[httpx.URL(base_url).host] = httpx.ASGITransport(app)
        return self

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self._apps.get(request.url.host)
        if app is None:
            raise httpx.ConnectError(f"no app serves {request.url.host}", request=request)
        return await app.handle_async_request(request)


class InProcessUpstream:
    """`coe.testing.FakeUpstream` without its server: the same state and faults, as an app
    to mount at `base_url`."""

    def __init__(self, name: str) -> None:
        self.state = UpstreamState(name=name)
        self.app = make_fake_app(self.state)
        self.base_url = f"http://{name}.test"

    @property
    def fault(self) -> Fault:
        return self.state.fault

    @fault.setter
    def fault(self, value: Fault) -> None:
        self.state.fault = value


def route_to(*upstreams: InProcessUpstream) -> HostRouter:
    router = HostRouter()
    for upstream in upstreams:
        router.mount(upstream.base_url, upstream.app)
    return router


@asynccontextmanager
async def running_gateway(
    settings: Settings, config: CoeConfig, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[FastAPI]:
    """The gateway app with its runtime up (ASGITransport does not run the lifespan); its
    expert calls go through `transport` (e.g. a HostRouter) instead of the network."""
    app = create_app(settings, config, transport=transport)
    async with app.router.lifespan_context(app):
        yield app


class _BoundedASGITransport(httpx.ASGITransport):
    """ASGITransport held to the request's read timeout as a whole, so an app that hangs
    fails the test instead of hanging it."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limit = request.extensions.get("timeout", {}).get("read")
        try:
            async with asyncio.timeout(limit):
                return await super().handle_async_request(request)
        except TimeoutError as err:
            raise httpx.ReadTimeout(f"no answer within {limit} s", request=request) from err


def asgi_client(app: FastAPI, **options: Any) -> httpx.AsyncClient:
    """A client of `app` at GATEWAY_URL (httpx's default 5 s timeout bounds each call)."""
    transport = _BoundedASGITransport(app)
    return httpx.AsyncClient(transport=transport, base_url=GATEWAY_URL, **options)


@asynccontextmanager
async def gateway_client(
    settings: Settings,
    config: CoeConfig,
    transport: httpx.AsyncBaseTransport | None = None,
    **client_options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """`running_gateway` and one client of it."""
    async with (
        running_gateway(settings, config, transport) as app,
        asgi_client(app, **client_options) as client,
    ):
        yield client
