"""What a fan-out did — the answers, who aggregated, what was skipped — and the `Answer` it ends in.

A `FanOut` is filled in while the strategy runs; `finish` turns it into the one `Answer` type
every caller gets, with the fan-out's part of the response's `coe` field in `Answer.fanout`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from coe.aggregation.fanout import ExpertAnswer, sum_usage
from coe.dispatch import Answer, Failure
from coe.errors import AllExpertsFailed, UpstreamError


@dataclass
class FanOut:
    strategy: str
    answers: list[ExpertAnswer]
    deadline_s: float
    aggregator: str | None = None  # the model called to synthesise or judge, when one was
    skipped: str | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # `vote` or `verdict` details
    aggregator_failures: list[Failure] = field(default_factory=list)
    aggregator_response: dict[str, Any] | None = None  # a judge's or non-streamed synthesis

    @property
    def answered(self) -> list[str]:
        return [a.expert for a in self.answers if a.ok]

    @property
    def failures(self) -> list[Failure]:
        experts = [f for a in self.answers if (f := a.failure()) is not None]
        return experts + self.aggregator_failures

    def usage(self) -> dict[str, int]:
        """Every call made so far: the experts, and the aggregator unless it is still streaming."""
        return sum_usage([*(a.response for a in self.answers), self.aggregator_response])

    def report(self) -> dict[str, Any]:
        report = {
            "strategy": self.strategy,
            "aggregator": self.aggregator,
            "skipped": self.skipped,
            "note": self.note,
            "deadline_s": self.deadline_s,
            **self.extra,
        }
        if self.aggregator_response is not None:
            report["aggregator_usage"] = sum_usage([self.aggregator_response])
        return report

    def meta(self) -> dict[str, Any]:
        """The parts of the response's `coe` field that only a fan-out has."""
        return {
            "experts": self.answered,
            "answers": [a.summary() for a in self.answers],
            "aggregation": self.report(),
            "failures": [vars(f) for f in self.failures],
            "usage": self.usage(),
        }

    def finish(
        self,
        expert: str,
        *,
        response: dict[str, Any] | None = None,
        first: dict[str, Any] | None = None,
        rest: AsyncIterator[dict[str, Any]] | None = None,
    ) -> Answer:
        """The final answer, written by `expert`; a whole response carries every call's usage."""
        if response is not None:
            response = {**response, "usage": self.usage()}
        return Answer(
            expert,
            response=response,
            first=first,
            rest=rest,
            failures=self.failures,
            experts=self.answered,
            aggregator=self.aggregator,
            fanout=self.meta(),
        )


def failures_of(err: UpstreamError) -> list[Failure]:
    """Each expert failure inside an error (AllExpertsFailed keeps one per expert)."""
    errors = err.failures if isinstance(err, AllExpertsFailed) else [err]
    return [Failure.of(e.expert or "?", e) for e in errors]
