"""The built-in aggregation strategies: first, vote, synthesize and best (a judge picks).

Synthesize and best skip the aggregator when only one expert answered or every final answer
agrees (`skip_if_agree`); if the aggregator (or judge) fails, the answered experts are tried
in turn, and if all fail the top-scored expert answer is returned with a note saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coe.aggregation.extract import extract_answer
from coe.aggregation.judge import parse_verdict
from coe.aggregation.prompts import JUDGE_PARAMS, judge_messages, synthesize_messages
from coe.aggregation.strategy import Combining, Strategy
from coe.aggregation.stream import with_usage
from coe.aggregation.vote import Ballot, all_agree, majority_vote
from coe.dispatch import Answer, complete_ranked, stream_ranked
from coe.errors import UpstreamError

if TYPE_CHECKING:
    from coe.aggregation.combine import Aggregation
    from coe.aggregation.fanout import ExpertAnswer
    from coe.aggregation.outcome import FanOut


def ballots(agg: Aggregation, ok: list[ExpertAnswer]) -> list[Ballot]:
    fmt = agg.spec.answer_format
    return [Ballot(a.expert, a.score, extract_answer(a.text, fmt)) for a in ok]


def shortcut(agg: Aggregation, out: FanOut, ok: list[ExpertAnswer]) -> ExpertAnswer | None:
    """The one answer to return without calling an aggregator, if there is one."""
    if len(ok) == 1:
        out.skipped = "only one expert answered"
        return ok[0]
    if agg.spec.skip_if_agree and all_agree(ballots(agg, ok)):
        out.skipped = "all experts agree"
        return ok[0]
    return None


class First(Strategy):
    """The first expert to answer wins; the fan-out stops there."""

    name = "first"
    until_first = True

    async def combine(self, job: Combining) -> Answer:
        return job.final(min(job.ok, key=lambda a: a.latency_ms))


class Vote(Strategy):
    """The final answer most experts gave (ties: the higher score)."""

    name = "vote"

    async def combine(self, job: Combining) -> Answer:
        result = majority_vote(ballots(job.agg, job.ok))
        job.out.extra["vote"] = result.to_dict()
        return job.final(next(a for a in job.ok if a.expert == result.winner))


class Synthesize(Strategy):
    """An aggregator expert writes one answer from all of them."""

    name = "synthesize"

    async def combine(self, job: Combining) -> Answer:
        agg, out, ok, body, stream = job.agg, job.out, job.ok, job.body, job.stream
        if (only := shortcut(agg, out, ok)) is not None:
            return job.final(only)
        order = agg.aggregator_order(ok)
        messages = synthesize_messages(body["messages"], job.question, [a.text for a in ok])
        request = {**agg.params(body), "messages": messages}
        try:
            if stream:
                synthesis = await stream_ranked(agg.client, order, agg.experts, request)
            else:
                synthesis = await complete_ranked(agg.client, order, agg.experts, request)
                out.aggregator_response = synthesis.response
        except UpstreamError as err:
            agg.fell_back(out, "aggregator", err, ok)
            return job.final(ok[0])
        out.aggregator = synthesis.expert
        out.aggregator_failures += synthesis.failures
        if out.aggregator != order[0]:
            out.note = f"aggregator {order[0]} failed; {out.aggregator} synthesised instead"
        if stream:
            first, rest = synthesis.stream()
            return out.finish(synthesis.expert, first=first, rest=with_usage(rest, out.usage()))
        return out.finish(synthesis.expert, response=synthesis.body)


class Best(Strategy):
    """A judge expert picks the best answer, returned as that expert wrote it."""

    name = "best"

    async def combine(self, job: Combining) -> Answer:
        agg, out, ok = job.agg, job.out, job.ok
        if (only := shortcut(agg, out, ok)) is not None:
            return job.final(only)
        order = agg.aggregator_order(ok)
        request = {
            **agg.params(job.body),
            **JUDGE_PARAMS,
            "messages": judge_messages(job.question, [a.text for a in ok]),
        }
        try:
            answer = await complete_ranked(agg.client, order, agg.experts, request)
        except UpstreamError as err:
            agg.fell_back(out, "judge", err, ok)
            return job.final(ok[0])
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
            return job.final(ok[0])
        return job.final(ok[choice - 1])
