"""Routers whose scores mean something give per-expert estimates and the probability of their
choice: the outcome router its predicted scores (and the costs it weighed), the instruction
router its softmax. Fitted by hand here (fixed vectors), so no encoder is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coe.experts.schema import CoeConfig
from coe.routing import Estimate, RouteContext, RouteDecision, Router, RouterDeps
from coe.routing.index import ExactIndex
from coe.routing.registry import RouterRegistry
from coe.store.embedded import EmbeddedStore
from tests.routers.conftest import ROUTERS_DIR

CONFIG = CoeConfig.model_validate(
    {
        "experts": [
            {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"], "cost": cost}
            for n, cost in (("a", 1.0), ("b", 0.0), ("c", 0.0))
        ],
        "default_expert": "a",
    }
)
CTX = RouteContext(experts={e.name: e for e in CONFIG.experts}, default_expert="a")
AXES = np.eye(3, dtype=np.float32)  # one unit vector per expert


def build(type_name: str, params: dict[str, Any]) -> Router:
    registry = RouterRegistry()
    registry.load_dir(ROUTERS_DIR)
    deps = RouterDeps(config=CONFIG, store=EmbeddedStore(), base_dir=Path.cwd())
    return registry.build(type_name, type_name, params, deps)


def outcome_router(cost_lambda: float = 0.0) -> Any:
    router: Any = build(
        "embedding",
        {"mode": "outcome", "examples": "unused", "k": 1, "cost_lambda": cost_lambda},
    )
    router.labels = ["a", "b", "c"]
    router._outcomes = np.array([[0.9, 0.5, 0.1], [0.2, 0.7, 0.3]], dtype=np.float32)
    router._index = ExactIndex(AXES[:2])  # example 0 near expert a's axis, 1 near b's
    router._costs = {}
    return router


def check(decision: RouteDecision) -> None:
    """Estimates name every candidate once; the probability is the first candidate's score."""
    assert {e.expert for e in decision.estimates} == set(decision.ranked)
    assert decision.probability == pytest.approx(decision.candidates[0].score)
    assert RouteDecision.from_dict(decision.to_dict()) == decision


def test_the_outcome_router_estimates_each_experts_score() -> None:
    [near_a, near_b] = outcome_router().decide(AXES[:2], CTX)
    for decision in (near_a, near_b):
        check(decision)
    assert near_a.chosen == ["a"]
    assert near_a.estimates == (
        Estimate("a", pytest.approx(0.9), cost=1.0),  # type: ignore[arg-type]
        Estimate("b", pytest.approx(0.5), cost=0.0),  # type: ignore[arg-type]
        Estimate("c", pytest.approx(0.1), cost=0.0),  # type: ignore[arg-type]
    )
    assert near_b.chosen == ["b"] and near_b.estimates[0].quality == pytest.approx(0.7)
    # the estimates are the predictions the details always showed
    assert {e.expert: round(e.quality, 4) for e in near_a.estimates} == near_a.details["predicted"]


def test_cost_moves_the_choice_not_the_estimate() -> None:
    [decision] = outcome_router(cost_lambda=0.5).decide(AXES[:1], CTX)
    check(decision)
    assert decision.chosen == ["b"]  # 0.5 - 0 beats 0.9 - 0.5
    assert {e.expert: e.quality for e in decision.estimates} == pytest.approx(
        {"a": 0.9, "b": 0.5, "c": 0.1}
    )


def test_the_outcome_router_leaves_out_experts_that_are_not_live() -> None:
    ctx = RouteContext(experts={"b": CTX.experts["b"]}, default_expert="b")
    [decision] = outcome_router().decide(AXES[:1], ctx)
    assert decision.estimates == (Estimate("b", pytest.approx(0.5), cost=0.0),)  # type: ignore[arg-type]
    assert decision.probability == 1.0


def test_the_instruction_router_gives_its_softmax() -> None:
    router: Any = build("instruction", {"alpha": 5.0, "k": 2})
    router._names = ["a", "b", "c"]
    router._vecs = AXES
    router.sources = dict.fromkeys("abc", "description")
    query = np.array([[0.8, 0.6, 0.0]], dtype=np.float32)
    [decision] = router.decide(query, CTX, None)
    check(decision)
    assert decision.ranked == ["a", "b", "c"] and decision.k == 2
    assert [e.quality for e in decision.estimates] == [c.score for c in decision.candidates]
    assert sum(e.quality for e in decision.estimates) == pytest.approx(1.0, abs=1e-5)
    want = np.exp(5.0 * np.array([0.8, 0.6, 0.0]))
    assert decision.probability == pytest.approx(float(want[0] / want.sum()), abs=1e-5)
