"""A decision's per-expert estimates and the probability of its choice: stored and read back
(decisions stored before they existed too), and kept true while the pipeline settles."""

from __future__ import annotations

from typing import Any

import pytest

from coe.experts.schema import CoeConfig, PipelineSpec
from coe.routing import Candidate, Estimate, RouteDecision, dynamic_k, ranked_from_scores
from coe.routing.settle import settle

DECISION = RouteDecision(
    candidates=ranked_from_scores({"a": 0.7, "b": 0.2, "c": 0.1}),
    router="r",
    reason="why",
    estimates=(Estimate("a", 0.81, uncertainty=0.05, cost=2.0), Estimate("b", 0.4)),
    probability=0.7,
)


def test_estimates_and_probability_round_trip() -> None:
    data = DECISION.to_dict()
    assert data["estimates"] == [
        {"expert": "a", "quality": 0.81, "uncertainty": 0.05, "cost": 2.0},
        {"expert": "b", "quality": 0.4, "uncertainty": None, "cost": None},
    ]
    assert data["probability"] == 0.7
    assert RouteDecision.from_dict(data) == DECISION


def test_a_decision_stored_before_estimates_existed_still_loads() -> None:
    old: dict[str, Any] = {
        "candidates": [{"expert": "a", "score": 1.0}],
        "router": "r",
        "reason": "stored by an older version",
        "k": 1,
        "abstained": False,
        "category": None,
        "details": {},
        "chosen": ["a"],
    }
    loaded = RouteDecision.from_dict(old)
    assert loaded.estimates == () and loaded.probability is None
    assert loaded.chosen == ["a"]
    plain = RouteDecision((Candidate("a", 1.0),), "r", "x")
    assert plain.to_dict()["estimates"] == [] and plain.to_dict()["probability"] is None


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_a_probability_is_a_probability(p: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        RouteDecision((Candidate("a", 1.0),), "r", "x", probability=p)


CONFIG = CoeConfig.model_validate(
    {
        "experts": [
            {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"]} for n in ("a", "b", "c")
        ],
        "default_expert": "a",
    }
)


def test_settling_keeps_them_and_dynamic_k_too() -> None:
    experts = {e.name: e for e in CONFIG.experts}
    final = settle(DECISION, "r", PipelineSpec(routers=["r"], k=2), experts, ["x: abstained"])
    assert final is not None and final.k == 2 and "fell back after" in final.reason
    assert final.estimates == DECISION.estimates and final.probability == 0.7
    wide = dynamic_k(DECISION, tau=0.95, max_k=3)
    assert wide.k == 3 and wide.estimates == DECISION.estimates and wide.probability == 0.7


def test_when_the_choice_is_not_live_its_probability_goes() -> None:
    """The router's probability was its first candidate's: once that one is dropped (not
    registered, or not available now), the decision no longer has one."""
    spec = PipelineSpec(routers=["r"])
    without_a = {e.name: e for e in CONFIG.experts if e.name != "a"}
    final = settle(DECISION, "r", spec, without_a, [])
    assert final is not None and final.chosen == ["b"]
    assert final.probability is None and final.estimates == (Estimate("b", 0.4),)
    without_c = {e.name: e for e in CONFIG.experts if e.name != "c"}
    kept = settle(DECISION, "r", spec, without_c, [])
    assert kept is not None and kept.probability == 0.7 and len(kept.estimates) == 2
