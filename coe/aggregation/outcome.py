"""What an aggregated request produced, and how it is reported in the response's `coe` field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from coe.aggregation.fanout import ExpertAnswer, sum_usage
from coe.dispatch import Failure
from coe.errors import AllExpertsFailed, UpstreamError


@dataclass
class Outcome:
    """The answers, who wrote the final text, and why; `response` or `first`/`rest` carry it."""

    strategy: str
    answers: list[ExpertAnswer]
    expert: str  # who wrote the text the client gets: the aggregator or the winning expert
    deadline_s: float
    aggregator: str | None = None  # the model called to synthesise or judge, when one was
    skipped: str | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # `vote` or `verdict` details
    aggregator_failures: list[Failure] = field(default_factory=list)
    aggregator_response: dict[str, Any] | None = None  # a judge's or non-streamed synthesis
    response: dict[str, Any] | None = None  # the final answer, when not streamed
    first: dict[str, Any] | None = None  # the final answer's stream, when streamed
    rest: AsyncIterator[dict[str, Any]] | None = None

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


def failures_of(err: UpstreamError) -> list[Failure]:
    """Each expert failure inside an error (AllExpertsFailed keeps one per expert)."""
    errors = err.failures if isinstance(err, AllExpertsFailed) else [err]
    return [Failure.of(e.expert or "?", e) for e in errors]
