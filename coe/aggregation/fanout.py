"""Ask k experts at once under one deadline; keep every answer and every failure with its reason.

Experts that fail are left out, experts still running at the deadline are cancelled and
reported as timed out; only when none answered does the whole fan-out fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from coe.dispatch import ExpertClient, Failure
from coe.errors import AllExpertsFailed, UpstreamError, UpstreamTimeout
from coe.experts.schema import ExpertSpec
from coe.routing.decision import Candidate

log = logging.getLogger(__name__)

Status = Literal["pending", "ok", "failed", "timed_out", "cancelled"]
SUMMARY_CHARS = 200
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass
class ExpertAnswer:
    """One expert's part in a fan-out: its answer, or why there is none."""

    expert: str
    score: float
    status: Status = "pending"
    latency_ms: float = 0.0
    response: dict[str, Any] | None = None
    error: UpstreamError | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def text(self) -> str:
        if self.response is None:
            return ""
        return str(self.response["choices"][0].get("message", {}).get("content") or "")

    @property
    def usage(self) -> dict[str, int]:
        return sum_usage([self.response]) if self.response is not None else {}

    def failure(self) -> Failure | None:
        return Failure.of(self.expert, self.error) if self.error is not None else None

    def to_record(self) -> dict[str, Any]:
        """What a batch job stores of this part between its run and aggregate phases."""
        if self.ok:
            return {"status": "ok", "response": self.response, "latency_ms": self.latency_ms}
        error = self.error.message if self.error is not None else f"status {self.status}"
        code = self.error.status_code if self.error is not None else 502
        return {"status": "failed", "error": error, "code": code, "latency_ms": self.latency_ms}

    @classmethod
    def from_record(cls, expert: str, score: float, record: dict[str, Any] | None) -> ExpertAnswer:
        """Rebuild a stored part; a missing one (its unit was cancelled) counts as failed."""
        latency = float((record or {}).get("latency_ms") or 0.0)
        if record is None:
            error = UpstreamError(f"expert {expert} gave no answer", expert=expert)
            return cls(expert, score, status="failed", error=error)
        if record["status"] == "ok":
            return cls(expert, score, "ok", latency, response=record["response"])
        kind = UpstreamTimeout if record.get("code") == 504 else UpstreamError
        error = kind(record["error"], expert=expert)
        return cls(expert, score, "failed", latency, error=error)

    def summary(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "score": self.score,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 1),
            "answer": self.text[:SUMMARY_CHARS] if self.ok else None,
            "error": self.error.message if self.error is not None else None,
            "usage": self.usage or None,
        }


def sum_usage(responses: Sequence[Mapping[str, Any] | None]) -> dict[str, int]:
    """Token counts added over several OpenAI responses or usage chunks."""
    total = dict.fromkeys(USAGE_KEYS, 0)
    for response in responses:
        usage = (response or {}).get("usage") or {}
        for key in USAGE_KEYS:
            value = usage.get(key)
            if isinstance(value, int):
                total[key] += value
    return total


async def fan_out(
    client: ExpertClient,
    picks: Sequence[Candidate],
    experts: Mapping[str, ExpertSpec],
    body: dict[str, Any],
    deadline_s: float,
    until_first: bool = False,
) -> list[ExpertAnswer]:
    """Every pick's answer, in pick order. With `until_first`, stop at the first success."""
    answers = {c.expert: ExpertAnswer(c.expert, c.score) for c in picks if c.expert in experts}
    started = time.perf_counter()

    async def ask(answer: ExpertAnswer) -> None:
        try:
            answer.response = await client.complete(experts[answer.expert], body)
        except UpstreamError as err:
            answer.status, answer.error = "failed", err
            log.warning("expert %s left out of the fan-out: %s", answer.expert, err.message)
        else:
            answer.status = "ok"
        answer.latency_ms = (time.perf_counter() - started) * 1000

    tasks = {asyncio.create_task(ask(a), name=f"fanout-{a.expert}"): a for a in answers.values()}
    pending = set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    won = False  # stopped early because an expert answered (`until_first`)
    try:
        while pending:
            left = deadline - loop.time()
            if left <= 0:
                break
            how = asyncio.FIRST_COMPLETED if until_first else asyncio.ALL_COMPLETED
            done, pending = await asyncio.wait(pending, timeout=left, return_when=how)
            for task in done:
                task.result()  # anything but an UpstreamError is a bug: let it out
            if until_first and any(tasks[t].ok for t in done):
                won = True
                break
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    elapsed_ms = (time.perf_counter() - started) * 1000
    for task in pending:
        _cut(tasks[task], elapsed_ms, deadline_s, first=won)
    return list(answers.values())


def _cut(answer: ExpertAnswer, elapsed_ms: float, deadline_s: float, first: bool) -> None:
    answer.latency_ms = elapsed_ms
    if first:
        answer.status = "cancelled"  # not a failure: another expert answered first
        return
    answer.status = "timed_out"
    answer.error = UpstreamTimeout(
        f"expert {answer.expert} did not answer within the {deadline_s:g} s deadline "
        "and was cancelled",
        expert=answer.expert,
    )


def none_answered(answers: Sequence[ExpertAnswer]) -> UpstreamError:
    """The error for a fan-out without a single answer: every failure, kept."""
    errors = [a.error for a in answers if a.error is not None]
    if errors and all(not e.retryable for e in errors):
        return errors[0]  # every expert rejected the request itself: the client's error
    if not errors:
        return AllExpertsFailed("none of the chosen experts is registered", [])
    detail = "; ".join(e.message for e in errors)
    return AllExpertsFailed(f"all {len(errors)} chosen experts failed: {detail}", errors)
