"""What a chat answer says about its routing: the `coe` field of its body (or first chunk)
and the x-coe-* headers."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from coe.dispatch import Answer
from coe.metadata import coe_metadata
from coe.pipeline import Plan
from coe.routing import RouteDecision


def coe_meta(
    plan: Plan, answer: Answer, request_id: str, upstream_model: str | None
) -> dict[str, Any]:
    context = {"route_ms": round(plan.route_ms, 3), "request_id": request_id}
    meta = coe_metadata(plan.decision, answer, upstream_model, context)
    meta.setdefault("policy", None)  # chat says so when the request carried none
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
