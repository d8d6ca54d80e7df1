"""What a router returns: ranked candidates with scores, a k, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Candidate:
    expert: str
    score: float


@dataclass(frozen=True)
class RouteDecision:
    """A router's answer. Candidates are ranked best first; the first k are used."""

    candidates: tuple[Candidate, ...]
    router: str
    reason: str
    k: int = 1
    abstained: bool = False
    category: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not self.abstained and not self.candidates:
            raise ValueError("a decision that does not abstain needs at least one candidate")

    @property
    def chosen(self) -> list[str]:
        return [c.expert for c in self.candidates[: self.k]]

    @property
    def ranked(self) -> list[str]:
        return [c.expert for c in self.candidates]

    def with_k(self, k: int, reason: str | None = None) -> RouteDecision:
        return replace(self, k=max(1, k), reason=reason or self.reason)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = [asdict(c) for c in self.candidates]
        out["chosen"] = self.chosen
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteDecision:
        """The inverse of `to_dict` (batch jobs store decisions between phases)."""
        return cls(
            candidates=tuple(Candidate(c["expert"], float(c["score"])) for c in data["candidates"]),
            router=data["router"],
            reason=data["reason"],
            k=int(data["k"]),
            abstained=bool(data.get("abstained", False)),
            category=data.get("category"),
            details=dict(data.get("details") or {}),
        )

    @classmethod
    def abstain(cls, router: str, reason: str, **details: Any) -> RouteDecision:
        return cls(candidates=(), router=router, reason=reason, abstained=True, details=details)


def ranked_from_scores(scores: dict[str, float]) -> tuple[Candidate, ...]:
    """Candidates sorted by score, best first; ties keep the mapping's order."""
    items = sorted(scores.items(), key=lambda kv: -kv[1])
    return tuple(Candidate(expert=e, score=float(s)) for e, s in items)
