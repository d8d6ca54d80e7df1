"""A router for the console's tests: the registered expert the query names, by name."""

from __future__ import annotations

import re

from coe.routing import Candidate, RouteContext, RouteDecision, Router


class MentionRouter(Router):
    type_name = "mention"

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        words = set(re.findall(r"[A-Za-z0-9._\-]+", query.lower()))
        named = sorted((n for n in ctx.experts if n.lower() in words), key=len, reverse=True)
        if not named:
            return RouteDecision.abstain(self.name, "no expert named in the query")
        others = [n for n in ctx.experts if n != named[0]]
        candidates = (Candidate(named[0], 0.9), *(Candidate(n, 0.1) for n in others))
        return RouteDecision(
            candidates=candidates, router=self.name, reason=f"the query names {named[0]}"
        )
