"""The pool service: one per device, the only owner of that device's pools, controllers and
scheduler, fronting their servers with one OpenAI-compatible endpoint (`coe pool serve`).

Gateways and workers send a pooled expert's calls here; the request's `model` picks the
expert (`coe.pool_service.relay`). Errors, /metrics and bearer checks are `coe.web`'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, generate_latest

from coe.errors import CoeError, ConfigError, ExpertUnavailable
from coe.experts.schema import CoeConfig
from coe.observability.pool_collector import PoolCollector
from coe.pool.metrics import PoolMetrics
from coe.pool.pools import build_pools
from coe.pool.registry import ControllerRegistry
from coe.pool.state import StateCollector, pool_state
from coe.pool_service.relay import Experts, Relay
from coe.web.errors import install_error_handlers
from coe.web.metrics import install_metrics

log = logging.getLogger(__name__)


def create_pool_app(
    config: CoeConfig,
    pools: Collection[str] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    base_dir: Path | None = None,
    controllers: ControllerRegistry | None = None,
    metrics_token: str | None = None,
) -> FastAPI:
    """The service of `pools` (default: every pool in `config`), its controllers and servers
    reached through `transport` (tests) or the network. Pools start with the app's lifespan.
    `metrics_token` (COE_METRICS_TOKEN) guards /metrics as it does the gateway's."""
    # Calls wait in the pool's queues, not for a connection: no cap on connections here.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    http = httpx.AsyncClient(transport=transport, limits=limits)
    metrics = PoolMetrics()
    pool_set = build_pools(
        config, http, metrics, base_dir=base_dir, controllers=controllers, names=pools
    )
    if not pool_set.pools:
        raise ConfigError("no pool to serve: the config has no pool with experts")
    experts = Experts(config, pool_set)
    models = {name: e.model for name, e in experts.by_name.items()}
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PoolCollector(metrics))
    registry.register(StateCollector(pool_set))
    requests = Counter(
        "coe_pool_requests",
        "Calls relayed, by the status the server answered (or ours)",
        ["pool", "expert", "priority", "status"],
        registry=registry,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await pool_set.start()
            log.info("pool service: serving %s", ", ".join(pool_set.pools))
            try:
                yield
            finally:
                await pool_set.close()
        finally:
            await http.aclose()

    app = FastAPI(title="coe pool service", lifespan=lifespan)
    app.state.pools = pool_set

    install_error_handlers(app)

    @app.exception_handler(CoeError)
    async def coe_error(request: Request, err: CoeError) -> JSONResponse:
        """The error as it is, with when to retry an expert that could not be swapped in."""
        headers = {}
        if isinstance(err, ExpertUnavailable) and err.expert is not None:
            pool = pool_set.pool_of(err.expert)
            retry = pool.retry_in(err.expert) if pool is not None else None
            if retry is not None:
                headers["retry-after"] = str(math.ceil(retry))
        return JSONResponse(err.to_openai(), status_code=err.status_code, headers=headers)

    relay = Relay(experts, pool_set, http, requests)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await relay.forward(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await relay.forward(request, "/v1/completions")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [{"id": m, "object": "model", "owned_by": "coe"} for m in sorted(experts.by_model)]
        return {"object": "list", "data": data}

    @app.get("/pool/state")
    async def state() -> dict[str, Any]:
        return pool_state(pool_set, models)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    install_metrics(app, lambda _: generate_latest(registry), metrics_token, in_schema=True)

    return app
