"""Keyword routing: the expert whose words the query mentions most, as a stand-alone plug-in.

Written against `coe.routing` only, which is all a third-party router needs.
"""

from __future__ import annotations

import re

from pydantic import Field

from coe.routing import RouteContext, RouteDecision, Router, RouterParams, ranked_from_scores


class KeywordParams(RouterParams):
    keywords: dict[str, list[str]] = Field(description="expert → words that send a query to it")


class KeywordRouter(Router):
    type_name = "keyword"
    Params = KeywordParams
    params: KeywordParams

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        words = set(re.findall(r"\w+", query.lower()))
        hits = {
            expert: len(words & {k.lower() for k in keywords})
            for expert, keywords in self.params.keywords.items()
            if expert in ctx.experts  # an expert removed at runtime is not offered
        }
        total = sum(hits.values())
        if total == 0:
            return RouteDecision.abstain(self.name, "no keyword in the query")
        ranked = ranked_from_scores({e: n / total for e, n in hits.items() if n})
        return RouteDecision(
            candidates=ranked,
            router=self.name,
            reason=f"{hits[ranked[0].expert]} keyword(s) of {ranked[0].expert}",
            details={"hits": {e: n for e, n in hits.items() if n}},
        )
