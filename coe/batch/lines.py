"""The per-line steps every batch engine runs, so a line gets the same decision, the same
expert and the same result line whoever runs it: answer a line on an expert, ask for one
expert's part of a k > 1 line, combine the parts, and the result line of each outcome
(answered, failed, given up, bad in itself). Engines only move lines and store outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coe.aggregation import ExpertAnswer
from coe.batch.faults import Faults
from coe.batch.wire import ParsedLine, answer_body, result_line
from coe.errors import CoeError
from coe.pipeline import Answer, Engine, Plan
from coe.routing.decision import RouteDecision

Result = dict[str, Any]  # one line of the output (or error) file, in OpenAI's shape


@dataclass(frozen=True)
class LineId:
    """Which line of which job: what every result line names."""

    job_id: str
    index: int
    custom_id: str


@dataclass(frozen=True)
class Outcome:
    """A finished line: its result line, whether it failed, and the answer (if any)."""

    result: Result
    failed: bool
    answer: Answer | None = None


# -- result lines -------------------------------------------------------------------------
def answered(line: LineId, decision: RouteDecision, answer: Answer, worker: str) -> Outcome:
    body = answer_body(decision, answer, worker=worker)
    result = result_line(line.job_id, line.index, line.custom_id, body=body)
    return Outcome(result, failed=False, answer=answer)


def error_line(line: LineId, code: str, message: str, status_code: int | None = None) -> Outcome:
    """A line that failed with `code`; with an HTTP status it carries an error response."""
    result = result_line(
        line.job_id, line.index, line.custom_id, status_code=status_code, error=(code, message)
    )
    return Outcome(result, failed=True)


def failed(line: LineId, err: CoeError) -> Outcome:
    """A line whose own request failed (a bad request, an unknown model, the experts)."""
    return error_line(line, err.code or err.error_type, err.message, err.status_code)


def given_up(line: LineId, message: str) -> Outcome:
    """A line the engine gave up on after its tries (a bug, the store): 500."""
    return error_line(line, "batch_unit_failed", message, status_code=500)


def bad_line(job_id: str, parsed: ParsedLine) -> Result:
    """The error line of a line bad in itself (400, `invalid_request`)."""
    line = LineId(job_id, parsed.index, parsed.custom_id)
    return error_line(line, "invalid_request", parsed.error or "", status_code=400).result


# -- steps --------------------------------------------------------------------------------
async def answer(
    engine: Engine,
    line: LineId,
    plan: Plan,
    expert: str,
    body: dict[str, Any],
    worker: str,
    faults: Faults,
) -> Outcome:
    """A k = 1 line in full, starting with `expert` and falling back down its ranked list."""
    try:
        reply = await engine.answer_on(plan, expert, body, sender=worker)
    except CoeError as err:
        return failed(line, err)
    faults.hit("run:answered")
    return answered(line, plan.decision, reply, worker)


async def ask(
    engine: Engine, expert: str, body: dict[str, Any], worker: str, faults: Faults
) -> ExpertAnswer:
    """One expert's part of a k > 1 line (a failure is recorded in the part)."""
    part = await engine.ask(expert, body, sender=worker)
    faults.hit("run:answered")
    return part


def parts_of(plan: Plan, stored: Mapping[str, dict[str, Any] | None]) -> list[ExpertAnswer]:
    """The chosen experts' stored parts (`ExpertAnswer.to_record`), in the decision's order;
    an expert with none stored reads as failed."""
    decision = plan.decision
    scores = (c.score for c in decision.candidates)  # the chosen are the first k
    return [
        ExpertAnswer.from_record(expert, score, stored.get(expert))
        for expert, score in zip(decision.chosen, scores, strict=False)
    ]


async def combine(
    engine: Engine,
    line: LineId,
    plan: Plan,
    stored: Mapping[str, dict[str, Any] | None],
    body: dict[str, Any],
    worker: str,
    faults: Faults,
) -> Outcome:
    """A k > 1 line's parts combined by its pipeline's aggregation."""
    try:
        reply = await engine.combine(plan, parts_of(plan, stored), body)
    except CoeError as err:
        return failed(line, err)
    faults.hit("aggregate:answered")
    return answered(line, plan.decision, reply, worker)
