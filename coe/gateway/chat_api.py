"""POST /v1/chat/completions: validate, hand to the engine, translate back. Nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from coe.dispatch.sse import DONE, encode_event
from coe.errors import InvalidRequest, UpstreamError
from coe.gateway.deps import RequestIdDep, ServicesDep
from coe.gateway.errors import read_json
from coe.gateway.wire import ChatCompletionRequest
from coe.pipeline import Completion, StreamStart

log = logging.getLogger(__name__)
router = APIRouter()


def coe_meta(
    result: Completion | StreamStart, request_id: str, upstream_model: str | None
) -> dict[str, Any]:
    return {
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


def coe_headers(result: Completion | StreamStart, request_id: str) -> dict[str, str]:
    return {
        "x-coe-expert": result.expert,
        "x-coe-router": result.decision.router,
        "x-request-id": request_id,
    }


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
    if unknown := req.unknown_fields():
        log.info("request %s: passing unrecognised fields to the expert: %s", rid, unknown)
    body = req.upstream_body()
    if req.stream:
        start = await services.engine.open_stream(body, rid)
        return StreamingResponse(
            _sse(start, rid, want_usage=bool((req.stream_options or {}).get("include_usage"))),
            media_type="text/event-stream",
            headers={**coe_headers(start, rid), "cache-control": "no-cache"},
        )
    result = await services.engine.complete(body, rid)
    response = dict(result.response)
    response["coe"] = coe_meta(result, rid, response.get("model"))
    response["model"] = result.expert
    return JSONResponse(response, headers=coe_headers(result, rid))


async def _sse(start: StreamStart, rid: str, want_usage: bool) -> AsyncIterator[bytes]:
    """Relay the expert's chunks; a failure after the first token ends with an error event."""
    try:
        first = dict(start.first)
        first["coe"] = coe_meta(start, rid, first.get("model"))
        first["model"] = start.expert
        yield encode_event(_usage_filtered(first, want_usage) or first)
        try:
            async for chunk in start.rest:
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
