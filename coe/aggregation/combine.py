"""The four ways k answers become one: synthesize, vote, first, best (a judge picks).

`Aggregation.run` fans the query out, then `combine` applies the pipeline's strategy (batch
jobs call `combine` alone, with answers gathered expert by expert). The aggregator (or
judge) is the router's per-category choice, else the pipeline's fixed one, else the top
candidate; if it fails, the answered experts are tried in turn, and if all fail the
top-scored expert answer is returned with a note saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from coe.aggregation.extract import extract_answer
from coe.aggregation.fanout import ExpertAnswer, fan_out, none_answered
from coe.aggregation.judge import parse_verdict
from coe.aggregation.outcome import FanOut, failures_of
from coe.aggregation.prompts import JUDGE_PARAMS, judge_messages, synthesize_messages
from coe.aggregation.stream import as_chunks, with_usage
from coe.aggregation.vote import Ballot, all_agree, majority_vote
from coe.dispatch import Answer, ExpertClient, complete_ranked, stream_ranked
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
    """One fanned-out request: built per request, `run` once."""

    def __init__(
        self,
        client: ExpertClient,
        experts: Mapping[str, ExpertSpec],
        decision: RouteDecision,
        spec: AggregationSpec,
    ):
        self.client = client
        self.experts = experts
        self.decision = decision
        self.spec = spec

    async def run(self, body: dict[str, Any], question: str, stream: bool) -> Answer:
        picks = self.decision.candidates[: self.decision.k]
        answers = await fan_out(
            self.client,
            picks,
            self.experts,
            body,
            self.spec.deadline_s,
            until_first=self.spec.strategy == "first",
        )
        return await self.combine(answers, body, question, stream)

    async def combine(
        self, answers: list[ExpertAnswer], body: dict[str, Any], question: str, stream: bool
    ) -> Answer:
        """Turn the experts' answers into one; batch jobs call this after running each group."""
        spec = self.spec
        first_only = spec.strategy == "first"
        ok = sorted((a for a in answers if a.ok), key=lambda a: -a.score)  # stable: rank order
        if not ok:
            raise none_answered(answers)
        out = FanOut(spec.strategy, answers, deadline_s=spec.deadline_s)
        if first_only:
            return self._final(out, min(ok, key=lambda a: a.latency_ms), stream)
        fmt = spec.answer_format
        ballots = [Ballot(a.expert, a.score, extract_answer(a.text, fmt)) for a in ok]
        if spec.strategy == "vote":
            result = majority_vote(ballots)
            out.extra["vote"] = result.to_dict()
            return self._final(out, next(a for a in ok if a.expert == result.winner), stream)
        if len(ok) == 1:
            out.skipped = "only one expert answered"
            return self._final(out, ok[0], stream)
        if spec.skip_if_agree and all_agree(ballots):
            out.skipped = "all experts agree"
            return self._final(out, ok[0], stream)
        order = [choose_aggregator(self.decision, spec, self.experts), *(a.expert for a in ok)]
        if spec.strategy == "best":
            return await self._judge(out, ok, order, body, question, stream)
        return await self._synthesize(out, ok, order, body, question, stream)

    def _final(self, out: FanOut, answer: ExpertAnswer, stream: bool) -> Answer:
        """Return one expert's finished answer (as chunks when the client streams)."""
        assert answer.response is not None
        if stream:
            first, rest = as_chunks(answer.response, out.usage())
            return out.finish(answer.expert, first=first, rest=rest)
        return out.finish(answer.expert, response=answer.response)

    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in DROPPED}

    def _fell_back(
        self, out: FanOut, role: str, err: UpstreamError, ok: list[ExpertAnswer]
    ) -> None:
        out.aggregator_failures += failures_of(err)
        out.note = f"every {role} failed ({err.message}); returned the top-scored expert's answer"
        log.warning("aggregation fell back to expert %s: %s", ok[0].expert, err.message)

    async def _synthesize(
        self,
        out: FanOut,
        ok: list[ExpertAnswer],
        order: list[str],
        body: dict[str, Any],
        question: str,
        stream: bool,
    ) -> Answer:
        messages = synthesize_messages(body["messages"], question, [a.text for a in ok])
        request = {**self._params(body), "messages": messages}
        try:
            if stream:
                synthesis = await stream_ranked(self.client, order, self.experts, request)
            else:
                synthesis = await complete_ranked(self.client, order, self.experts, request)
                out.aggregator_response = synthesis.response
        except UpstreamError as err:
            self._fell_back(out, "aggregator", err, ok)
            return self._final(out, ok[0], stream)
        out.aggregator = synthesis.expert
        out.aggregator_failures += synthesis.failures
        if out.aggregator != order[0]:
            out.note = f"aggregator {order[0]} failed; {out.aggregator} synthesised instead"
        if stream:
            first, rest = synthesis.stream()
            return out.finish(synthesis.expert, first=first, rest=with_usage(rest, out.usage()))
        return out.finish(synthesis.expert, response=synthesis.body)

    async def _judge(
        self,
        out: FanOut,
        ok: list[ExpertAnswer],
        order: list[str],
        body: dict[str, Any],
        question: str,
        stream: bool,
    ) -> Answer:
        request = {
            **self._params(body),
            **JUDGE_PARAMS,
            "messages": judge_messages(question, [a.text for a in ok]),
        }
        try:
            answer = await complete_ranked(self.client, order, self.experts, request)
        except UpstreamError as err:
            self._fell_back(out, "judge", err, ok)
            return self._final(out, ok[0], stream)
        out.aggregator = answer.expert
        out.aggregator_failures += answer.failures
        out.aggregator_response = answer.body
        verdict = str(answer.body["choices"][0].get("message", {}).get("content") or "")
        choice = parse_verdict(verdict, len(ok))
        out.extra["verdict"] = {"text": verdict[:200], "choice": choice}
        if choice is None:
            out.note = (
                f"judge {answer.expert}'s verdict was unparseable; returned the top-scored answer"
            )
            return self._final(out, ok[0], stream)
        return self._final(out, ok[choice - 1], stream)
