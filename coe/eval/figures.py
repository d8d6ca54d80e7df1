"""LLMRouterBench-style summary figures of a router against the best single model and the oracle.

Gain over the best single model (points), the share of the best-single → oracle gap the
router closes, and the cost saved at equal quality: the cheapest point of a cost sweep
that still matches the best single model's score, as a share of that model's cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SweepPoint:
    router: str
    cost_lambda: float
    score: float
    mean_cost: float


@dataclass(frozen=True)
class BenchFigures:
    gain_points: float  # (router - best single) x 100
    gap_closed: float | None  # (router - best) / (oracle - best); None when oracle == best
    reach: SweepPoint | None  # cheapest sweep point scoring >= the best single model
    best_single_cost: float

    @property
    def cost_saved(self) -> float | None:
        """1 - reach cost / best single's cost; None when no sweep point reaches it."""
        if self.reach is None or self.best_single_cost <= 0:
            return None
        return 1.0 - self.reach.mean_cost / self.best_single_cost

    def gap_text(self) -> str:
        return "n/a (oracle = best single)" if self.gap_closed is None else f"{self.gap_closed:.0%}"

    def saved_text(self) -> str:
        if self.reach is None:
            return "not reached"
        saved = self.cost_saved
        r = self.reach
        pct = f"{saved:.0%} saved" if saved is not None else "n/a"
        return (
            f"{pct} (`{r.router}` at λ={r.cost_lambda}: score {r.score} at cost "
            f"{r.mean_cost} vs {self.best_single_cost})"
        )


def cheapest_at_quality(points: Sequence[SweepPoint], target: float) -> SweepPoint | None:
    """The lowest-cost point whose score is at least `target` (ties: the higher score)."""
    ok = [p for p in points if p.score >= target]
    return min(ok, key=lambda p: (p.mean_cost, -p.score)) if ok else None


def bench_figures(
    router_score: float,
    best_single_score: float,
    oracle_score: float,
    best_single_cost: float,
    sweep: Sequence[SweepPoint] = (),
) -> BenchFigures:
    gap = oracle_score - best_single_score
    return BenchFigures(
        gain_points=round((router_score - best_single_score) * 100, 2),
        gap_closed=(router_score - best_single_score) / gap if gap > 1e-12 else None,
        reach=cheapest_at_quality(sweep, best_single_score),
        best_single_cost=best_single_cost,
    )
