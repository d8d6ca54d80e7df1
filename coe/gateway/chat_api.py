"""POST /v1/chat/completions: validate, hand to the engine, translate back. Nothing else.

A request's routing policy (`coe`: k, max_cost, allow, deny, pipeline) rides in the body
to the engine, which routes by it and keeps it from the experts; `coe.policy` echoes it.
Streamed answers (and the keep-alive of a slow fan-out) are `coe.gateway.streaming`'s.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from coe.gateway.answer_meta import coe_headers, coe_meta
from coe.gateway.auth import CallerDep
from coe.gateway.json_body import JsonBodyRoute
from coe.gateway.streaming import fan_out_stream, streaming
from coe.protocol import ChatCompletionRequest
from coe.web.deps import RequestIdDep, RuntimeDep

router = APIRouter(route_class=JsonBodyRoute)


@router.post("/v1/chat/completions")
async def chat_completions(
    req: ChatCompletionRequest, runtime: RuntimeDep, rid: RequestIdDep, caller: CallerDep
) -> Any:
    settings = runtime.settings
    req.check_limits(settings.max_messages, settings.max_tokens_limit)
    req.log_unknown(rid)
    body = req.upstream_body()
    engine, metrics = runtime.engine, runtime.metrics
    plan = await engine.plan(body, rid, caller)
    metrics.observe_plan(plan)  # its choices and the decision's time
    seen = runtime.activity.watch(plan, rid, req.model, bool(req.stream))  # for the console
    if req.stream:
        want_usage = bool((req.stream_options or {}).get("include_usage"))
        if plan.fans_out:
            return await seen.answer(fan_out_stream(engine, plan, body, rid, want_usage, metrics))
        opened = await seen.answer(engine.open_stream(plan, body))
        return streaming(plan, opened, rid, want_usage, metrics)
    answer = await seen.answer(engine.complete(plan, body))
    metrics.observe_fallbacks([f.expert for f in answer.failures])
    response = dict(answer.body)
    response["coe"] = coe_meta(plan, answer, rid, response.get("model"))
    response["model"] = answer.expert
    return JSONResponse(response, headers=coe_headers(plan, answer, rid))
