"""The simplest strategy: always the configured default expert, then every other expert."""

from __future__ import annotations

from coe.routing import Candidate, RouteContext, RouteDecision, Router


class DefaultRouter(Router):
    type_name = "default"

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        others = [name for name in ctx.experts if name != ctx.default_expert]
        candidates = [Candidate(ctx.default_expert, 1.0)]
        candidates += [Candidate(name, 0.0) for name in others]
        return RouteDecision(
            candidates=tuple(candidates),
            router=self.name,
            reason=f"default expert {ctx.default_expert}",
        )
