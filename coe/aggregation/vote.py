"""Majority over extracted final answers; ties go to the answer with the best router score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coe.aggregation.extract import Extracted


@dataclass(frozen=True)
class Ballot:
    expert: str
    score: float
    answer: Extracted


@dataclass(frozen=True)
class VoteResult:
    winner: str  # the expert whose answer is returned: best-scored in the winning group
    value: str
    counts: dict[str, int]  # answer value → votes
    tie_broken: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "winner": self.winner,
            "value": self.value,
            "counts": self.counts,
            "tie_broken_by_score": self.tie_broken,
        }


def all_agree(ballots: Sequence[Ballot]) -> bool:
    """At least two answers and every one extracts to the same non-empty final answer."""
    keys = {b.answer.key for b in ballots}
    return len(ballots) >= 2 and len(keys) == 1 and ballots[0].answer.kind != "none"


def majority_vote(ballots: Sequence[Ballot]) -> VoteResult:
    """The most common final answer; empty answers do not vote unless nothing else does."""
    if not ballots:
        raise ValueError("majority_vote needs at least one ballot")
    voting = [b for b in ballots if b.answer.kind != "none"] or list(ballots)
    groups: dict[str, list[Ballot]] = {}
    for ballot in voting:
        groups.setdefault(ballot.answer.key, []).append(ballot)
    top = max(len(g) for g in groups.values())
    tied = [g for g in groups.values() if len(g) == top]
    best = max(tied, key=lambda g: max(b.score for b in g))
    winner = max(best, key=lambda b: b.score)
    counts: dict[str, int] = {}
    for group in groups.values():
        counts[group[0].answer.value] = len(group)
    return VoteResult(
        winner=winner.expert, value=winner.answer.value, counts=counts, tie_broken=len(tied) > 1
    )
