"""A test router with scores, k and an aggregator set in experts.yaml: deterministic fan-outs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from coe.routing.base import RouteContext, Router
from coe.routing.decision import RouteDecision, ranked_from_scores


class FixedScoresParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scores: dict[str, float]
    k: int = 1
    aggregator: str | None = None


class FixedScoresRouter(Router):
    type_name = "test_fixed_scores"
    Params = FixedScoresParams

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        params = self.params
        assert isinstance(params, FixedScoresParams)
        details = {"aggregator": params.aggregator} if params.aggregator else {}
        return RouteDecision(
            candidates=ranked_from_scores(params.scores),
            router=self.name,
            reason="fixed scores",
            k=params.k,
            details=details,
        )
