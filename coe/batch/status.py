"""A batch job's lifecycle, declared once: its statuses (OpenAI's wire strings), which are
terminal, the moves between them, and the phase graph its lines go through.

    validating ─► in_progress ─► finalizing ─► completed | expired
        │               └─► cancelling ─► finalizing ─► cancelled
        └─► failed      (the input file as a whole is bad: nothing runs)

Lines go route ─► (assign: every line routed, before any is answered) ─► run ─► aggregate.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# Finished: nothing moves a job on from here.
TERMINAL = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED}
)
# The job's units do nothing: cancelled (or on the way), failed or expired.
STOPPED = frozenset(
    {JobStatus.CANCELLING, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.EXPIRED}
)
# No longer the workers' to drive: finished, or being cancelled or finalized.
NOT_DRIVEN = TERMINAL | {JobStatus.CANCELLING, JobStatus.FINALIZING}

# Where each status may go next; a terminal status goes nowhere.
MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset(
        {JobStatus.IN_PROGRESS, JobStatus.FAILED, JobStatus.CANCELLING, JobStatus.FINALIZING}
    ),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.FINALIZING, JobStatus.CANCELLING}),
    JobStatus.CANCELLING: frozenset({JobStatus.FINALIZING}),
    JobStatus.FINALIZING: frozenset({JobStatus.COMPLETED, JobStatus.EXPIRED, JobStatus.CANCELLED}),
    **{status: frozenset() for status in TERMINAL},
}


def can_move(old: JobStatus, new: JobStatus) -> bool:
    return new in MOVES[old]


class Phase(StrEnum):
    """What a unit of work on the stream does to its lines."""

    ROUTE = "route"
    RUN = "run"
    AGGREGATE = "aggregate"


# The phase graph: what follows each phase once every unit of it is done (the step
# between route and run is the job's assign barrier, `coe.batch.assign`).
NEXT: dict[Phase, Phase | None] = {
    Phase.ROUTE: Phase.RUN,
    Phase.RUN: Phase.AGGREGATE,
    Phase.AGGREGATE: None,
}
