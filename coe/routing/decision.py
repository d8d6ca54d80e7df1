"""What a router returns: ranked candidates with scores, a k, and why; optionally its
per-expert estimates and the probability it gave its choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Candidate:
    expert: str
    score: float


@dataclass(frozen=True)
class Estimate:
    """A router's prediction for one expert on this query. `quality` is on the router's
    own scale (an outcome router: the predicted score, in [0, 1] for outcome data scored so;
    a softmax router: the probability the expert is the right one); `uncertainty` (same
    scale, e.g. a spread) and `cost` (the expert's cost the router weighed) when it has them."""

    expert: str
    quality: float
    uncertainty: float | None = None
    cost: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(data["expert"], float(data["quality"]), number("uncertainty"), number("cost"))


@dataclass(frozen=True)
class RouteDecision:
    """A router's answer. Candidates are ranked best first; the first k are used.

    `estimates`: per-expert predictions, for routers whose scores have a meaning beyond the
    ranking (empty otherwise). `probability`: the probability the router gave its choice
    (the first candidate): the real one for a stochastic or softmax router, None for a
    deterministic one that has none to give."""

    candidates: tuple[Candidate, ...]
    router: str
    reason: str
    k: int = 1
    abstained: bool = False
    category: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    estimates: tuple[Estimate, ...] = ()
    probability: float | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not self.abstained and not self.candidates:
            raise ValueError("a decision that does not abstain needs at least one candidate")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")

    @property
    def picks(self) -> tuple[Candidate, ...]:
        """The candidates that answer: the first k (the one place that slices them)."""
        return self.candidates[: self.k]

    @property
    def chosen(self) -> list[str]:
        return [c.expert for c in self.picks]

    @property
    def ranked(self) -> list[str]:
        return [c.expert for c in self.candidates]

    def with_k(self, k: int, reason: str | None = None) -> RouteDecision:
        return replace(self, k=max(1, k), reason=reason or self.reason)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = [asdict(c) for c in self.candidates]
        out["estimates"] = [asdict(e) for e in self.estimates]
        out["chosen"] = self.chosen
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteDecision:
        """The inverse of `to_dict` (batch jobs store decisions between phases; one stored
        before estimates and probability existed loads without them)."""
        probability = data.get("probability")
        return cls(
            candidates=tuple(Candidate(c["expert"], float(c["score"])) for c in data["candidates"]),
            router=data["router"],
            reason=data["reason"],
            k=int(data["k"]),
            abstained=bool(data.get("abstained", False)),
            category=data.get("category"),
            details=dict(data.get("details") or {}),
            estimates=tuple(Estimate.from_dict(e) for e in data.get("estimates") or ()),
            probability=None if probability is None else float(probability),
        )

    @classmethod
    def abstain(cls, router: str, reason: str, **details: Any) -> RouteDecision:
        return cls(candidates=(), router=router, reason=reason, abstained=True, details=details)


def ranked_from_scores(scores: dict[str, float]) -> tuple[Candidate, ...]:
    """Candidates sorted by score, best first; ties keep the mapping's order."""
    items = sorted(scores.items(), key=lambda kv: -kv[1])
    return tuple(Candidate(expert=e, score=float(s)) for e, s in items)
