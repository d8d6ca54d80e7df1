"""The `coe` metadata an answer carries (routing decision, experts, failures, fan-out), built
in one place for the chat endpoint and batch result lines; each adds its own context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coe.pipeline import Answer
from coe.routing import RouteDecision


def coe_metadata(
    decision: RouteDecision,
    answer: Answer,
    upstream_model: str | None,
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """What routed and answered a request. `context` is the caller's own (a request id and
    the routing time, a batch worker's name); `policy` is present when the request carried
    one; a fan-out adds what it did (experts, answers, aggregation, failures, usage)."""
    meta: dict[str, Any] = {
        "router": decision.router,
        "reason": decision.reason,
        "category": decision.category,
        "decision": decision.to_dict(),
        "upstream_model": upstream_model,
        **context,
        "expert": answer.expert,
        "experts": answer.experts,  # [expert] unless a fan-out answered
        "failures": [vars(f) for f in answer.failures],
    }
    if (policy := decision.details.get("policy")) is not None:
        meta["policy"] = policy  # the request's own routing policy, as applied
    if answer.fanout is not None:
        meta.update(answer.fanout)
    return meta
