"""The job-level assign step between routing and answering: once every line of a job is
routed (a barrier), an `Assigner` sees all their plans together and gives each line its
final plan, before any line is answered. The default keeps every plan as routed; budgets
and joint assignment under capacity are assigners. Every batch engine calls its assigner
exactly once per job (`assign_stored`, on the plans as the engines store them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from coe.pipeline import Engine, Plan

Stored = dict[str, Any]  # a plan as `Plan.to_dict` stores it
# What an engine's store side calls at the barrier: (job id, stored plans by line) ->
# final stored plans by line (lines left out keep theirs).
AssignStored = Callable[[str, dict[int, Stored]], Awaitable[dict[int, Stored]]]


@dataclass(frozen=True)
class Routed:
    """One routed line of the job: its index in the input and its plan."""

    index: int
    plan: Plan


class Assigner(ABC):
    """Gives every routed line of a job its final plan, all lines at once."""

    name: ClassVar[str] = ""

    @abstractmethod
    async def assign(self, job_id: str, lines: Sequence[Routed]) -> Mapping[int, Plan]:
        """Each line's final plan by index; a line left out keeps its routed plan."""


class KeepRouted(Assigner):
    """Every line answered as it was routed."""

    name = "keep"

    async def assign(self, job_id: str, lines: Sequence[Routed]) -> Mapping[int, Plan]:
        return {line.index: line.plan for line in lines}


async def assign_stored(
    assigner: Assigner, engine: Callable[[], Engine], job_id: str, stored: Mapping[int, Stored]
) -> dict[int, Stored]:
    """The assigner over stored plans: restored with the engine (asked for only when a line
    was routed), assigned, stored again."""
    restore = engine().restore if stored else None
    routed = [Routed(i, restore(plan)) for i, plan in sorted(stored.items()) if restore]
    final = await assigner.assign(job_id, routed)
    return {index: plan.to_dict() for index, plan in final.items()}
