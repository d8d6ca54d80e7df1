"""POST /v1/chat/completions: validate, hand to the engine, translate back. Nothing else.

A request's routing policy (`coe`: k, max_cost, allow, deny, pipeline) rides in the body
to the engine, which routes by it and keeps it from the experts; `coe.policy` echoes it.

A fan-out (k > 1) that is still working after `keepalive_s` starts its SSE response early and
sends `: keep-alive` comments until the answer streams, so that no client or proxy times out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from coe.dispatch import Answer
from coe.dispatch.sse import DONE, encode_comment, encode_event
from coe.errors import CoeError, InvalidRequest, UpstreamError
from coe.gateway.deps import RequestIdDep, RuntimeDep
from coe.gateway.errors import client_error, log_failure, read_json
from coe.observability import Metrics
from coe.pipeline import Engine, Plan
from coe.protocol import ChatCompletionRequest
from coe.routing import Caller, RouteDecision

log = logging.getLogger(__name__)
router = APIRouter()


def coe_meta(
    plan: Plan, answer: Answer, request_id: str, upstream_model: str | None
) -> dict[str, Any]:
    decision = plan.decision
    meta = {
        "expert": answer.expert,
        "upstream_model": upstream_model,
        "experts": [answer.expert],
        "router": decision.router,
        "reason": decision.reason,
        "category": decision.category,
        "decision": decision.to_dict(),
        "policy": decision.details.get("policy"),  # the request's own, as applied
        "failures": [vars(f) for f in answer.failures],
        "route_ms": round(plan.route_ms, 3),
        "request_id": request_id,
    }
    if answer.fanout is not None:
        meta.update(answer.fanout)  # experts, answers, aggregation, failures, usage
    return meta


def decision_headers(decision: RouteDecision) -> dict[str, str]:
    """The routing decision in headers: the router, the top candidate's score (its
    confidence) and the category when the router found one (percent-encoded if not ASCII)."""
    headers = {"x-coe-router": decision.router}
    if decision.candidates:
        headers["x-coe-confidence"] = f"{decision.candidates[0].score:.4g}"
    if decision.category:
        headers["x-coe-category"] = quote(decision.category, safe=" -_./:()&,+")
    return headers


def coe_headers(plan: Plan, answer: Answer, request_id: str) -> dict[str, str]:
    headers = {
        "x-coe-expert": ",".join(answer.experts),
        **decision_headers(plan.decision),
        "x-request-id": request_id,
    }
    if answer.aggregator is not None:
        headers["x-coe-aggregator"] = answer.aggregator
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
async def chat_completions(request: Request, runtime: RuntimeDep, rid: RequestIdDep) -> Any:
    raw = await read_json(request, runtime.settings.max_body_bytes)
    req = ChatCompletionRequest.model_validate(raw)
    if len(req.messages) > runtime.settings.max_messages:
        raise InvalidRequest(
            f"messages has {len(req.messages)} entries; the limit is "
            f"{runtime.settings.max_messages}",
            param="messages",
        )
    for key in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, key)
        if value is not None and value > runtime.settings.max_tokens_limit:
            raise InvalidRequest(
                f"{key} is {value}; the limit is {runtime.settings.max_tokens_limit}", param=key
            )
    if unknown := req.unknown_fields():
        log.info("request %s: passing unrecognised fields to the expert: %s", rid, unknown)
    body = req.upstream_body()
    engine = runtime.engine
    plan = await engine.plan(body, rid, Caller(key_id=getattr(request.state, "api_key_id", None)))
    metrics = runtime.metrics
    metrics.observe_plan(plan)  # its choices and the decision's time
    seen = runtime.activity.watch(plan, rid, req.model, bool(req.stream))  # for the console
    if req.stream:
        want_usage = bool((req.stream_options or {}).get("include_usage"))
        if plan.fans_out:
            return await seen.answer(_fan_out_stream(engine, plan, body, rid, want_usage, metrics))
        opened = await seen.answer(engine.open_stream(plan, body))
        return _streaming(plan, opened, rid, want_usage, metrics)
    answer = await seen.answer(engine.complete(plan, body))
    metrics.observe_fallbacks([f.expert for f in answer.failures])
    response = dict(answer.body)
    response["coe"] = coe_meta(plan, answer, rid, response.get("model"))
    response["model"] = answer.expert
    return JSONResponse(response, headers=coe_headers(plan, answer, rid))


def _streaming(
    plan: Plan, answer: Answer, rid: str, want_usage: bool, metrics: Metrics
) -> StreamingResponse:
    return StreamingResponse(
        _sse(plan, answer, rid, want_usage, metrics),
        media_type="text/event-stream",
        headers={**coe_headers(plan, answer, rid), "cache-control": "no-cache"},
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
    task = asyncio.create_task(engine.open_stream(plan, body), name=f"stream-{rid}")
    every = plan.aggregation.keepalive_s
    try:
        await asyncio.wait({task}, timeout=every)
    except asyncio.CancelledError:
        task.cancel()  # the request itself was cancelled: stop the experts too
        raise
    if task.done():
        return _streaming(plan, task.result(), rid, want_usage, metrics)
    headers = {**decision_headers(plan.decision), "cache-control": "no-cache"}
    return StreamingResponse(
        _kept_alive(plan, task, every, rid, want_usage, metrics),
        media_type="text/event-stream",
        headers=headers,
    )


async def _kept_alive(
    plan: Plan,
    task: asyncio.Task[Answer],
    every: float,
    rid: str,
    want_usage: bool,
    metrics: Metrics,
) -> AsyncIterator[bytes]:
    relayed = False
    try:
        while not task.done():
            yield encode_comment("keep-alive")
            await asyncio.wait({task}, timeout=every)
        try:
            answer = task.result()
        except CoeError as err:
            log_failure(err, "fan-out failed after the stream began")
            yield encode_event(client_error(err, rid))
            return
        relayed = True
        async for piece in _sse(plan, answer, rid, want_usage, metrics):
            yield piece
    finally:
        if not task.done():  # the client went away: stop the experts too
            task.cancel()
        elif not relayed and not task.cancelled() and task.exception() is None:
            await task.result().aclose()


async def _sse(
    plan: Plan, answer: Answer, rid: str, want_usage: bool, metrics: Metrics
) -> AsyncIterator[bytes]:
    """Relay the expert's chunks; a failure after the first token ends with an error event."""
    metrics.observe_fallbacks([f.expert for f in answer.failures])
    first_chunk, rest = answer.stream()
    try:
        first = dict(first_chunk)
        first["coe"] = coe_meta(plan, answer, rid, first.get("model"))
        first["model"] = answer.expert
        yield encode_event(_usage_filtered(first, want_usage) or first)
        try:
            async for chunk in rest:
                out = _usage_filtered({**chunk, "model": answer.expert}, want_usage)
                if out is not None:
                    yield encode_event(out)
        except UpstreamError as err:
            log_failure(err, f"stream from {answer.expert} broke")
            body = client_error(err, rid)
            body["error"]["message"] = (
                f"The expert stream broke before it finished: {body['error']['message']}"
            )
            body["error"]["code"] = "stream_interrupted"
            yield encode_event(body)
            return
        yield encode_event(DONE)
    finally:
        await answer.aclose()


def _usage_filtered(chunk: dict[str, Any], want_usage: bool) -> dict[str, Any] | None:
    """We always ask experts for usage; pass it on only if the client asked for it."""
    if want_usage:
        return chunk
    if not chunk.get("choices") and chunk.get("usage"):
        return None
    if "usage" in chunk:
        chunk = {k: v for k, v in chunk.items() if k != "usage"}
    return chunk
