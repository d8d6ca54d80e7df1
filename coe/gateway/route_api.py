"""POST /v1/route: the routing decision for a query, without generating anything.

It takes the routing policy a chat request may carry (`coe`) and decides under it, so it
explains exactly what the same chat request would do.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from coe.errors import InvalidRequest
from coe.gateway.auth import CallerDep
from coe.gateway.json_body import JsonBodyRoute
from coe.pipeline import query_text
from coe.protocol import RouteRequest
from coe.web.deps import RequestIdDep, RuntimeDep

router = APIRouter(route_class=JsonBodyRoute)


@router.post("/v1/route")
async def route(
    req: RouteRequest, runtime: RuntimeDep, rid: RequestIdDep, caller: CallerDep
) -> dict[str, Any]:
    if req.query is not None:
        query = req.query
    elif req.messages is not None:
        query = query_text([m.model_dump() for m in req.messages])
    else:
        raise InvalidRequest("Give either `query` or `messages`", param="query")
    engine = runtime.engine
    target = engine.target(req.model, req.coe)
    started = time.perf_counter()
    decision = await engine.decide(target, query, rid, req.coe, caller=caller)
    runtime.metrics.observe_decision(
        target.pipeline, decision.router, time.perf_counter() - started
    )
    return {
        "object": "coe.route",
        "model": req.model,
        "pipeline": target.pipeline,
        "request_id": rid,
        "policy": decision.details.get("policy"),
        **decision.to_dict(),
    }
