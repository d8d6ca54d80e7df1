"""POST /v1/chat/completions: validate, hand to the engine, translate back. Nothing else.

A fan-out (k > 1) that is still working after `keepalive_s` starts its SSE response early and
sends `: keep-alive` comments until the answer streams, so that no client or proxy times out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from coe.dispatch.sse import DONE, encode_comment, encode_event
from coe.errors import CoeError, InvalidRequest, UpstreamError
from coe.gateway.deps import RequestIdDep, ServicesDep
from coe.gateway.errors import read_json
from coe.gateway.wire import ChatCompletionRequest
from coe.observability import Metrics
from coe.pipeline import Completion, Engine, Plan, StreamStart

log = logging.getLogger(__name__)
router = APIRouter()


def coe_meta(
    result: Completion | StreamStart, request_id: str, upstream_model: str | None
) -> dict[str, Any]:
    meta = {
        "expert": result.expert,
        "upstream_model": upstream_model,
        "experts": [result.expert],
        "router": result.decision.router,
        "reason": result.decision.reason,
        "category": result.decision.category,
        "decision": result.decision.to_dict(),
        "failures": [vars(f) for f in result.failures],
        "route_ms": round(result.route_ms, 3),
        "request_id": request_id,
    }
    if result.aggregation is not None:
        meta.update(result.aggregation)  # experts, answers, aggregation, failures, usage
    return meta


def coe_headers(result: Completion | StreamStart, request_id: str) -> dict[str, str]:
    headers = {
        "x-coe-expert": ",".join(result.experts or [result.expert]),
        "x-coe-router": result.decision.router,
        "x-request-id": request_id,
    }
    if result.aggregator is not None:
        headers["x-coe-aggregator"] = result.aggregator
    return headers


@router.post(
    "/v1/chat/completions",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
        }
    },
)
async def chat_completions(request: Request, services: ServicesDep, rid: RequestIdDep) -> Any:
    raw = await read_json(request, services.settings.max_body_bytes)
    req = ChatCompletionRequest.model_validate(raw)
    if len(req.messages) > services.settings.max_messages:
        raise InvalidRequest(
            f"messages has {len(req.messages)} entries; the limit is "
            f"{services.settings.max_messages}",
            param="messages",
        )
    for key in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, key)
        if value is not None and value > services.settings.max_tokens_limit:
            raise InvalidRequest(
                f"{key} is {value}; the limit is {services.settings.max_tokens_limit}", param=key
            )
    if unknown := req.unknown_fields():
        log.info("request %s: passing unrecognised fields to the expert: %s", rid, unknown)
    body = req.upstream_body()
    engine = services.engine
    plan = await engine.plan(body, rid)
    metrics = services.metrics
    metrics.observe_route(plan.decision.router, plan.decision.chosen)
    if req.stream:
        want_usage = bool((req.stream_options or {}).get("include_usage"))
        if plan.fans_out:
            return await _fan_out_stream(engine, plan, body, rid, want_usage, metrics)
        start = await engine.open_stream(body, rid, plan)
        return _streaming(start, rid, want_usage, metrics)
    result = await engine.complete(body, rid, plan)
    metrics.observe_fallbacks([f.expert for f in result.failures])
    metrics.observe_usage(result.expert, result.response.get("usage"))
    response = dict(result.response)
    response["coe"] = coe_meta(result, rid, response.get("model"))
    response["model"] = result.expert
    return JSONResponse(response, headers=coe_headers(result, rid))


def _streaming(
    start: StreamStart, rid: str, want_usage: bool, metrics: Metrics
) -> StreamingResponse:
    return StreamingResponse(
        _sse(start, rid, want_usage, metrics),
        media_type="text/event-stream",
        headers={**coe_headers(start, rid), "cache-control": "no-cache"},
    )


async def _fan_out_stream(
    engine: Engine,
    plan: Plan,
    body: dict[str, Any],
    rid: str,
    want_usage: bool,
    metrics: Metrics,
) -> StreamingResponse:
    """Answer normally if the fan-out is quick; otherwise start the stream and keep it alive.

    Started early, the response has no x-coe-expert header yet: the first data chunk's
    `coe` field names the experts, and an error arrives as an error event.
    """
    task = asyncio.create_task(engine.open_stream(body, rid, plan), name=f"stream-{rid}")
    every = plan.aggregation.keepalive_s
    try:
        await asyncio.wait({task}, timeout=every)
    except asyncio.CancelledError:
        task.cancel()  # the request itself was cancelled: stop the experts too
        raise
    if task.done():
        return _streaming(task.result(), rid, want_usage, metrics)
    headers = {"x-coe-router": plan.decision.router, "cache-control": "no-cache"}
    return StreamingResponse(
        _kept_alive(task, every, rid, want_usage, metrics),
        media_type="text/event-stream",
        headers=headers,
    )


async def _kept_alive(
    task: asyncio.Task[StreamStart], every: float, rid: str, want_usage: bool, metrics: Metrics
) -> AsyncIterator[bytes]:
    relayed = False
    try:
        while not task.done():
            yield encode_comment("keep-alive")
            await asyncio.wait({task}, timeout=every)
        try:
            start = task.result()
        except CoeError as err:
            log.warning("request %s: fan-out failed after the stream began: %s", rid, err.message)
            yield encode_event(err.to_openai())
            return
        relayed = True
        async for piece in _sse(start, rid, want_usage, metrics):
            yield piece
    finally:
        if not task.done():  # the client went away: stop the experts too
            task.cancel()
        elif not relayed and not task.cancelled() and task.exception() is None:
            await task.result().rest.aclose()  # type: ignore[attr-defined]


async def _sse(
    start: StreamStart, rid: str, want_usage: bool, metrics: Metrics
) -> AsyncIterator[bytes]:
    """Relay the expert's chunks; a failure after the first token ends with an error event."""
    metrics.observe_fallbacks([f.expert for f in start.failures])
    try:
        first = dict(start.first)
        first["coe"] = coe_meta(start, rid, first.get("model"))
        first["model"] = start.expert
        yield encode_event(_usage_filtered(first, want_usage) or first)
        try:
            async for chunk in start.rest:
                if chunk.get("usage"):
                    metrics.observe_usage(start.expert, chunk["usage"])
                out = _usage_filtered({**chunk, "model": start.expert}, want_usage)
                if out is not None:
                    yield encode_event(out)
        except UpstreamError as err:
            log.warning("request %s: stream from %s broke: %s", rid, start.expert, err.message)
            yield encode_event(
                {
                    "error": {
                        "message": f"The expert stream broke before it finished: {err.message}",
                        "type": err.error_type,
                        "param": None,
                        "code": "stream_interrupted",
                    }
                }
            )
            return
        yield encode_event(DONE)
    finally:
        await start.rest.aclose()  # type: ignore[attr-defined]


def _usage_filtered(chunk: dict[str, Any], want_usage: bool) -> dict[str, Any] | None:
    """We always ask experts for usage; pass it on only if the client asked for it."""
    if want_usage:
        return chunk
    if not chunk.get("choices") and chunk.get("usage"):
        return None
    if "usage" in chunk:
        chunk = {k: v for k, v in chunk.items() if k != "usage"}
    return chunk
