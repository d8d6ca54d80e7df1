"""Nested cross-validation: outer test folds never choose parameters; extra data only trains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from coe.errors import ConfigError
from coe.eval.figures import SweepPoint, bench_figures
from coe.eval.nested import grid_points, nested_cv, replay
from coe.routing.data import LabelledExample, kfold

ITEMS = [LabelledExample(f"q{i}", f"question {i}", "a" if i % 2 else "b") for i in range(60)]


class Recorder:
    """An `evaluate` that records every (train ids, test ids, params) it is called with."""

    def __init__(self, score: Any = None) -> None:
        self.calls: list[tuple[set[str], set[str], dict[str, Any]]] = []
        self.score = score or (lambda train, test, params: 0.5)

    def __call__(
        self, train: Sequence[LabelledExample], test: Sequence[LabelledExample], params: dict
    ) -> dict[str, Any]:
        self.calls.append(({e.id for e in train}, {e.id for e in test}, dict(params)))
        return {"accuracy": self.score(train, test, params), "n": len(test)}


def test_choosing_never_sees_the_outer_test_fold() -> None:
    rec = Recorder()
    result = nested_cv(ITEMS, {"k": [1, 3, 5]}, rec, "accuracy", outer=5, inner=3, seed=0)
    outer = kfold(ITEMS, 5, 0)
    per_fold = 3 * 3 + 1  # 3 grid points x 3 inner folds, then the outer test once
    assert len(rec.calls) == 5 * per_fold
    for f, (train, test) in enumerate(outer):
        held = {e.id for e in test}
        calls = rec.calls[f * per_fold : (f + 1) * per_fold]
        for tr, te, _ in calls[:-1]:  # selection: inside the outer training part only
            assert not (tr | te) & held
        tr, te, params = calls[-1]  # scoring: the whole training part, then the held fold
        assert te == held and tr == {e.id for e in train}
        assert params == result.folds[f].params


def test_a_fold_specific_leak_is_not_picked() -> None:
    """`cheat` scores perfectly exactly when evaluated on an outer test fold; an honest
    selection (inner folds only) never sees one, so it keeps the honest point."""
    outer_folds = [frozenset(e.id for e in test) for _, test in kfold(ITEMS, 5, 0)]

    def score(train: Any, test: Sequence[LabelledExample], params: dict) -> float:
        if params["mode"] == "cheat":
            return 1.0 if frozenset(e.id for e in test) in outer_folds else 0.0
        return 0.6

    result = nested_cv(ITEMS, {"mode": ["cheat", "fair"]}, Recorder(score), "accuracy", 5, 3)
    assert [f.params for f in result.folds] == [{"mode": "fair"}] * 5
    assert result.mean() == 0.6 and result.picked() == "mode=fair (5/5 folds)"


def test_extra_training_data_never_enters_a_test_part() -> None:
    extra = [LabelledExample(f"x{i}", f"extra {i}", "a") for i in range(10)]
    rec = Recorder()
    nested_cv(ITEMS, {"k": [1, 2]}, rec, "accuracy", 3, 2, extra_train=extra)
    extra_ids = {e.id for e in extra}
    for tr, te, _ in rec.calls:
        assert extra_ids <= tr and not te & extra_ids


def test_replay_scores_siblings_with_each_folds_choice() -> None:
    def score(train: Any, test: Any, params: dict) -> float:
        return float(params["k"]) / 10

    source = nested_cv(ITEMS, {"k": [1, 3]}, Recorder(score), "accuracy", 4, 2)
    rec = Recorder()
    sibling = replay(ITEMS, source, rec, "accuracy")
    assert [c[2] for c in rec.calls] == [f.params for f in source.folds] == [{"k": 3}] * 4
    assert [c[1] for c in rec.calls] == [set(f.test_ids) for f in source.folds]
    assert sibling.summary()["nested"]["picked"] == [{"k": 3}] * 4


def test_grid_and_fold_errors_are_clear() -> None:
    assert grid_points({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    with pytest.raises(ConfigError, match="no values"):
        grid_points({"a": []})
    with pytest.raises(ConfigError, match="2 inner folds"):
        nested_cv(ITEMS, {}, Recorder(), "accuracy", inner=1)


def test_llmrouterbench_figures() -> None:
    sweep = [
        SweepPoint("r", 0.0, 0.66, 0.80),
        SweepPoint("r", 0.1, 0.63, 0.30),
        SweepPoint("r", 0.2, 0.61, 0.20),
    ]
    fig = bench_figures(0.66, 0.62, 0.80, 0.9, sweep)
    assert fig.gain_points == 4.0
    assert fig.gap_closed == pytest.approx(0.04 / 0.18)
    assert fig.reach == sweep[1]  # the cheapest that still matches 0.62
    assert fig.cost_saved == pytest.approx(1 - 0.30 / 0.9)
    assert "67% saved" in fig.saved_text()
    assert bench_figures(0.6, 0.62, 0.8, 0.9, sweep[2:]).saved_text() == "not reached"
    assert bench_figures(0.6, 0.6, 0.6, 0.9).gap_text().startswith("n/a")
