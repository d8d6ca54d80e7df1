"""Nested cross-validation: hyperparameters picked on inner folds, scored on outer folds only.

For every outer fold, an inner k-fold over the outer *training* part scores each point of
a small grid; the best point (ties: the earlier one in grid order) is refitted on the whole
outer training part and scored once on the outer test fold. Headline numbers are means
over outer folds, so no test item ever influences the parameters it is scored with.
Extra training data (another data set) only ever joins training parts, never a test part.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from coe.errors import ConfigError
from coe.routing.data import LabelledExample, OutcomeExample, kfold

T = TypeVar("T", OutcomeExample, LabelledExample)

# (training items, test items, params) -> a result dict holding the metric
Evaluate = Callable[[Sequence[Any], Sequence[Any], dict[str, Any]], dict[str, Any]]


def _join(train: Sequence[Any], extra: Sequence[Any]) -> list[Any]:
    return list(train) + list(extra)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order (the order of the keys)."""
    if not grid:
        return [{}]
    keys = list(grid)
    for k in keys:
        if not grid[k]:
            raise ConfigError(f"grid parameter {k!r} has no values")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def describe_grid(grid: Mapping[str, Sequence[Any]]) -> str:
    return "; ".join(f"{k} ∈ {{{', '.join(str(v) for v in vs)}}}" for k, vs in grid.items())


@dataclass(frozen=True)
class OuterFold:
    index: int
    params: dict[str, Any]  # chosen on the inner folds of this fold's training part
    inner_score: float  # the chosen point's mean inner score
    result: dict[str, Any]  # the evaluation on this fold's test part
    train_ids: frozenset[str] = field(repr=False)
    test_ids: frozenset[str] = field(repr=False)


@dataclass(frozen=True)
class NestedResult:
    metric: str
    grid: dict[str, list[Any]]
    outer: int
    inner: int
    seed: int
    folds: list[OuterFold]

    def mean(self, key: str | None = None) -> float:
        key = key or self.metric
        return round(float(np.mean([f.result[key] for f in self.folds])), 4)

    def std(self, key: str | None = None) -> float:
        key = key or self.metric
        return round(float(np.std([f.result[key] for f in self.folds])), 4)

    def most_common_params(self) -> tuple[dict[str, Any], int]:
        """The parameter point picked by the most outer folds, and how many picked it."""
        counts = Counter(tuple(sorted(f.params.items())) for f in self.folds)
        point, n = counts.most_common(1)[0]
        return dict(point), n

    def picked(self) -> str:
        """E.g. "C=10 (4/5 folds)": the most frequent choice, for the report."""
        if not self.grid:
            return "fixed"
        point, n = self.most_common_params()
        text = ", ".join(f"{k}={v}" for k, v in point.items())
        return f"{text} ({n}/{len(self.folds)} folds)"

    def summary(self) -> dict[str, Any]:
        """The mean of every numeric key the outer folds share, plus how tuning went."""
        first = self.folds[0].result
        keys = [
            k
            for k, v in first.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "n"
        ]
        return {
            **{k: self.mean(k) for k in keys},
            f"{self.metric}_std": self.std(),
            "n": sum(int(f.result.get("n", 0)) for f in self.folds),
            "nested": {
                "outer_folds": self.outer,
                "inner_folds": self.inner,
                "seed": self.seed,
                "grid": self.grid,
                "picked": [f.params for f in self.folds],
            },
        }


def select(
    train: Sequence[T],
    grid: Mapping[str, Sequence[Any]],
    evaluate: Evaluate,
    metric: str,
    inner: int = 3,
    seed: int = 0,
    extra_train: Sequence[Any] = (),
) -> tuple[dict[str, Any], float]:
    """The grid point with the best mean `metric` over an inner k-fold of `train` alone."""
    points = grid_points(grid)
    if len(points) == 1:
        return points[0], float("nan")
    splits = kfold(train, inner, seed)
    best: tuple[float, int] | None = None
    for i, point in enumerate(points):
        score = float(
            np.mean([evaluate(_join(a, extra_train), b, dict(point))[metric] for a, b in splits])
        )
        if best is None or score > best[0]:
            best = (score, i)
    assert best is not None
    return dict(points[best[1]]), round(best[0], 4)


def nested_cv(
    items: Sequence[T],
    grid: Mapping[str, Sequence[Any]],
    evaluate: Evaluate,
    metric: str,
    outer: int = 5,
    inner: int = 3,
    seed: int = 0,
    extra_train: Sequence[Any] = (),
) -> NestedResult:
    """Outer k-fold (folds fixed by id and `seed`); parameters chosen per fold by `select`.

    `evaluate(train, test, params)` fits on `train`, scores `test` and returns a dict
    with `metric` (higher is better). `extra_train` joins every training part only.
    """
    if inner < 2:
        raise ConfigError("nested cross-validation needs at least 2 inner folds")
    folds = []
    for i, (train, test) in enumerate(kfold(items, outer, seed)):
        params, inner_score = select(train, grid, evaluate, metric, inner, seed + 1, extra_train)
        result = evaluate(_join(train, extra_train), test, dict(params))
        folds.append(
            OuterFold(
                i,
                params,
                inner_score,
                result,
                frozenset(x.id for x in train),
                frozenset(x.id for x in test),
            )
        )
    return NestedResult(metric, {k: list(v) for k, v in grid.items()}, outer, inner, seed, folds)


def outer_splits(
    items: Sequence[T], result: NestedResult
) -> list[tuple[list[T], list[T], dict[str, Any]]]:
    """(train, test, chosen params) per outer fold: reuse a nested run's choices elsewhere,
    e.g. a cost sweep that varies λ with the quality knobs each fold picked."""
    return [
        (
            [x for x in items if x.id in f.train_ids],
            [x for x in items if x.id in f.test_ids],
            dict(f.params),
        )
        for f in result.folds
    ]


def replay(
    items: Sequence[T],
    source: NestedResult,
    evaluate: Evaluate,
    metric: str,
    extra_train: Sequence[Any] = (),
) -> NestedResult:
    """Score another configuration on `source`'s outer folds with the parameters `source`
    picked on each fold's training part (e.g. a sibling preset sharing the same step 1)."""
    folds = []
    for i, (train, test, params) in enumerate(outer_splits(items, source)):
        result = evaluate(_join(train, extra_train), test, dict(params))
        src = source.folds[i]
        folds.append(OuterFold(i, params, src.inner_score, result, src.train_ids, src.test_ids))
    return NestedResult(metric, source.grid, source.outer, source.inner, source.seed, folds)
