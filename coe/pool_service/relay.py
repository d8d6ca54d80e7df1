"""The pool service's relay: a call goes to the expert its `model` names, admitted (queued
until resident) for the whole call, its stream included, and leaves its queue when the
caller hangs up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from coe.dispatch.relay import (
    is_event_stream,
    open_upstream,
    read_all,
    relay_chunks,
    relayed_headers,
)
from coe.errors import CoeError, ConfigError, InvalidRequest, ModelNotFound
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.pool.pool import Priority
from coe.pool.pools import PoolSet

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


class Experts:
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


class Relay:
    """Relays calls to the served pools' experts through `http`, counting them in `requests`."""

    def __init__(
        self, experts: Experts, pools: PoolSet, http: httpx.AsyncClient, requests: Counter
    ):
        self.experts = experts
        self.pools = pools
        self.http = http
        self.requests = requests

    async def forward(self, request: Request, path: str) -> Response:
        body = await request.body()
        expert, body = _pick(self.experts, body)
        priority = _priority(request.headers.get(PRIORITY_HEADER))
        sender = request.headers.get(SENDER_HEADER) or None
        pool = self.pools.pool_of(expert.name)
        assert pool is not None
        timeout = httpx.Timeout(expert.limits.timeout_s, connect=expert.limits.connect_timeout_s)
        held = AsyncExitStack()

        async def begin() -> tuple[httpx.Response, bytes | None]:
            await held.enter_async_context(self.pools.admit(expert.name, priority, sender))
            url = pool.controller.upstream(expert.name) + path
            resp = await open_upstream(
                self.http, url, body, request.headers, timeouts=timeout, expert=expert.name
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
            self.requests.labels(pool.name, expert.name, priority, status).inc()
        headers = relayed_headers(resp)
        media_type = resp.headers.get("content-type")
        if content is not None:
            await held.aclose()
            return Response(content, resp.status_code, headers=headers, media_type=media_type)
        chunks = relay_chunks(resp, expert=expert.name)
        return _HeldStream(held, chunks, resp.status_code, headers=headers, media_type=media_type)


def _pick(experts: Experts, body: bytes) -> tuple[ExpertSpec, bytes]:
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
