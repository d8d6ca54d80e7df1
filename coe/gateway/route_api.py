"""POST /v1/route: the routing decision for a query, without generating anything."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from coe.errors import InvalidRequest
from coe.gateway.deps import RequestIdDep, RuntimeDep
from coe.gateway.errors import read_json
from coe.pipeline import query_text
from coe.protocol import RouteRequest

router = APIRouter()


@router.post(
    "/v1/route",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RouteRequest.model_json_schema()}},
        }
    },
)
async def route(request: Request, runtime: RuntimeDep, rid: RequestIdDep) -> dict[str, Any]:
    req = RouteRequest.model_validate(await read_json(request, runtime.settings.max_body_bytes))
    if req.query is not None:
        query = req.query
    elif req.messages is not None:
        query = query_text([m.model_dump() for m in req.messages])
    else:
        raise InvalidRequest("Give either `query` or `messages`", param="query")
    engine = runtime.engine
    target = engine.resolve(req.model)
    decision = await engine.decide(target, query, rid)
    return {"object": "coe.route", "model": req.model, "request_id": rid, **decision.to_dict()}
