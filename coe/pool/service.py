"""The pool service: one per device, the only owner of that device's pools, controllers and
scheduler, fronting their servers with one OpenAI-compatible endpoint (`coe pool serve`).

Gateways and workers send a pooled expert's calls here; the request's `model` picks the
expert, which is admitted (queued until resident) for the whole call, its stream included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from coe.dispatch.relay import (
    is_event_stream,
    open_upstream,
    read_all,
    relay_chunks,
    relayed_headers,
)
from coe.errors import (
    CoeError,
    ConfigError,
    ExpertUnavailable,
    InvalidRequest,
    ModelNotFound,
    error_body,
)
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.observability.metrics import check_scrape
from coe.observability.pool_collector import PoolCollector
from coe.pool.metrics import PoolMetrics
from coe.pool.pool import Priority
from coe.pool.pools import PoolSet, build_pools
from coe.pool.registry import ControllerRegistry
from coe.pool.state import StateCollector, pool_state

log = logging.getLogger(__name__)

PRIORITY_HEADER = "x-coe-priority"
SENDER_HEADER = "x-coe-sender"  # which batch worker: a lone worker's next group need not wait
T = TypeVar("T")


class _ClientGone(Exception):
    """The caller hung up before its call was admitted and answered."""


class _HeldStream(StreamingResponse):
    """A streamed answer that keeps its expert admitted until the last byte is sent or the
    client goes away."""

    def __init__(self, held: AsyncExitStack, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.held.aclose()


class _Experts:
    """The served pools' experts, found by the model id requests name (or their own name)."""

    def __init__(self, config: CoeConfig, pools: PoolSet):
        self.by_name = {e.name: e for e in config.experts if pools.pool_of(e.name) is not None}
        self.by_model: dict[str, ExpertSpec] = {}
        for expert in self.by_name.values():
            other = self.by_model.setdefault(expert.model, expert)
            if other is not expert:
                raise ConfigError(
                    f"experts {other.name} and {expert.name} are served by one pool service "
                    f"under the same model {expert.model!r}: give each its own served model name"
                )

    def find(self, model: str) -> ExpertSpec:
        expert = self.by_model.get(model) or self.by_name.get(model)
        if expert is None:
            raise ModelNotFound(
                f"The model `{model}` is not served by this pool service "
                f"(models: {', '.join(sorted(self.by_model))})",
                param="model",
            )
        return expert


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
    experts = _Experts(config, pool_set)
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

    @app.exception_handler(CoeError)
    async def coe_error(request: Request, err: CoeError) -> JSONResponse:
        headers = {}
        if isinstance(err, ExpertUnavailable) and err.expert is not None:
            pool = pool_set.pool_of(err.expert)
            retry = pool.retry_in(err.expert) if pool is not None else None
            if retry is not None:
                headers["retry-after"] = str(math.ceil(retry))
        return JSONResponse(err.to_openai(), status_code=err.status_code, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(err.detail), kind), status_code=err.status_code)

    async def forward(request: Request, path: str) -> Response:
        body = await request.body()
        expert, body = _pick(experts, body)
        priority = _priority(request.headers.get(PRIORITY_HEADER))
        sender = request.headers.get(SENDER_HEADER) or None
        pool = pool_set.pool_of(expert.name)
        assert pool is not None
        timeout = httpx.Timeout(expert.limits.timeout_s, connect=expert.limits.connect_timeout_s)
        held = AsyncExitStack()

        async def begin() -> tuple[httpx.Response, bytes | None]:
            await held.enter_async_context(pool_set.admit(expert.name, priority, sender))
            url = pool.controller.upstream(expert.name) + path
            resp = await open_upstream(
                http, url, body, request.headers, timeouts=timeout, expert=expert.name
            )
            held.push_async_callback(resp.aclose)
            if is_event_stream(resp):
                return resp, None
            return resp, await read_all(resp, expert=expert.name)

        status = "error"
        try:
            resp, content = await _unless_client_leaves(request.receive, begin())
            status = str(resp.status_code)
        except _ClientGone:
            status = "499"
            await held.aclose()
            return Response(status_code=499)  # nobody reads it
        except BaseException as err:
            if isinstance(err, CoeError):
                status = str(err.status_code)
            await held.aclose()
            raise
        finally:
            requests.labels(pool.name, expert.name, priority, status).inc()
        headers = relayed_headers(resp)
        media_type = resp.headers.get("content-type")
        if content is not None:
            await held.aclose()
            return Response(content, resp.status_code, headers=headers, media_type=media_type)
        chunks = relay_chunks(resp, expert=expert.name)
        return _HeldStream(held, chunks, resp.status_code, headers=headers, media_type=media_type)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await forward(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward(request, "/v1/completions")

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

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        check_scrape(request.headers.get("authorization"), metrics_token)
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app


def _pick(experts: _Experts, body: bytes) -> tuple[ExpertSpec, bytes]:
    """The expert the body's `model` names, and the body to send it (its model id in it)."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidRequest("the request body is not JSON") from None
    model = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required: the served model id of an expert", param="model")
    expert = experts.find(model)
    if model != expert.model:  # named by the expert's name: the server knows its model id
        payload["model"] = expert.model
        body = json.dumps(payload).encode()
    return expert, body


def _priority(value: str | None) -> Priority:
    if value is None or value.strip().lower() == "online":
        return "online"
    if value.strip().lower() == "batch":
        return "batch"
    raise InvalidRequest(f"{PRIORITY_HEADER} must be online or batch, not {value!r}")


async def _unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (a queued call then
    leaves its queue instead of swapping in an expert nobody waits for)."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we are cancelled ourselves (shutdown): so is the work
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # its failure no longer matters
    raise _ClientGone
