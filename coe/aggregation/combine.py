"""One fanned-out request: fan the query out, then let the pipeline's strategy combine.

`Aggregation.run` fans out, then `combine` hands the answers to the strategy plug-in
(`coe.aggregation.strategy`; the built-ins are in `strategies.py`); batch jobs call `combine`
alone, with answers gathered expert by expert. The aggregator (or judge) is the router's
per-category choice, else the pipeline's fixed one, else the top candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from coe.aggregation.fanout import ExpertAnswer, fan_out, none_answered
from coe.aggregation.outcome import FanOut, failures_of
from coe.aggregation.strategy import Combining, Strategy, StrategyRegistry
from coe.aggregation.stream import as_chunks
from coe.dispatch import Answer, ExpertClient
from coe.errors import UpstreamError
from coe.experts.schema import AggregationSpec, ExpertSpec
from coe.routing.decision import RouteDecision

log = logging.getLogger(__name__)
DROPPED = ("messages", "n", "stream", "stream_options")  # not passed on to the aggregator


def choose_aggregator(
    decision: RouteDecision, spec: AggregationSpec, experts: Mapping[str, ExpertSpec]
) -> str:
    """The router's per-category pick, else the pipeline's fixed aggregator, else the top one."""
    for name in (decision.details.get("aggregator"), spec.aggregator):
        if isinstance(name, str) and name in experts:
            return name
    return decision.candidates[0].expert


class Aggregation:
    """One fanned-out request: built per request, `run` once. `strategy` is the plug-in
    `spec.strategy` names (the engine resolves it; by default the built-in of that name)."""

    def __init__(
        self,
        client: ExpertClient,
        experts: Mapping[str, ExpertSpec],
        decision: RouteDecision,
        spec: AggregationSpec,
        strategy: Strategy | None = None,
    ):
        self.client = client
        self.experts = experts
        self.decision = decision
        self.spec = spec
        if strategy is None:
            strategy = StrategyRegistry.builtins().strategy(spec.strategy)
        self.strategy = strategy

    async def run(self, body: dict[str, Any], question: str, stream: bool) -> Answer:
        picks = self.decision.picks
        answers = await fan_out(
            self.client,
            picks,
            self.experts,
            body,
            self.spec.deadline_s,
            until_first=self.strategy.until_first,
        )
        return await self.combine(answers, body, question, stream)

    async def combine(
        self, answers: list[ExpertAnswer], body: dict[str, Any], question: str, stream: bool
    ) -> Answer:
        """Turn the experts' answers into one; batch jobs call this after running each group."""
        ok = sorted((a for a in answers if a.ok), key=lambda a: -a.score)  # stable: rank order
        if not ok:
            raise none_answered(answers)
        out = FanOut(self.spec.strategy, answers, deadline_s=self.spec.deadline_s)
        return await self.strategy.combine(Combining(self, out, ok, body, question, stream))

    # -- what strategies build on ---------------------------------------------------------
    def final(self, out: FanOut, answer: ExpertAnswer, stream: bool) -> Answer:
        """Return one expert's finished answer (as chunks when the client streams)."""
        assert answer.response is not None
        if stream:
            first, rest = as_chunks(answer.response, out.usage())
            return out.finish(answer.expert, first=first, rest=rest)
        return out.finish(answer.expert, response=answer.response)

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        """The client's request parameters an aggregator call keeps."""
        return {k: v for k, v in body.items() if k not in DROPPED}

    def aggregator_order(self, ok: list[ExpertAnswer]) -> list[str]:
        """Who aggregates (or judges): the chosen aggregator, then the answered experts."""
        return [choose_aggregator(self.decision, self.spec, self.experts), *(a.expert for a in ok)]

    def fell_back(self, out: FanOut, role: str, err: UpstreamError, ok: list[ExpertAnswer]) -> None:
        out.aggregator_failures += failures_of(err)
        out.note = f"every {role} failed ({err.message}); returned the top-scored expert's answer"
        log.warning("aggregation fell back to expert %s: %s", ok[0].expert, err.message)
