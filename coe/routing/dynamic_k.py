"""Dynamic k: harder queries (flatter router probabilities) get more experts."""

from __future__ import annotations

from dataclasses import replace

from coe.routing.decision import RouteDecision


def dynamic_k(decision: RouteDecision, tau: float, max_k: int) -> RouteDecision:
    """Smallest k whose cumulative normalised score reaches `tau`, capped by `max_k`.

    Scores are normalised over the candidates so any router's scores work as
    probabilities; a decision with no positive mass keeps k = 1.
    """
    if decision.abstained or not decision.candidates:
        return decision
    scores = [max(0.0, c.score) for c in decision.candidates]
    total = sum(scores)
    cumulative = 0.0
    k = 1
    if total > 0:
        k = len(scores)
        for i, s in enumerate(scores, start=1):
            cumulative += s / total
            if cumulative >= tau - 1e-12:
                k = i
                break
    k = min(k, max_k, len(scores))
    return replace(
        decision,
        reason=f"{decision.reason}; dynamic k={k} (tau={tau}, cumulative={cumulative:.2f})",
        k=k,
        details={**decision.details, "dynamic_k": {"tau": tau, "max_k": max_k, "k": k}},
    )
