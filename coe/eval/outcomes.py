"""Evaluate routers on outcome data: the chosen model's measured score and its price.

Every named configuration is a real router class fitted on the training rows only;
baselines are the best single model (chosen on train), random choice and the oracle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from coe.errors import ConfigError
from coe.eval.builders import build_profiles, category_map, category_scores
from coe.eval.harness import build_router, context, offline_config
from coe.eval.nested import NestedResult, nested_cv
from coe.routing.base import Router
from coe.routing.data import LabelledExample, ModelInfo, OutcomeExample
from coe.routing.encoders import EncoderCache

# name -> (router type, params, how it is fitted); overrides come from --set / sweeps
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "embedding-knn": ("embedding", {"mode": "knn", "k": 10, "aggregate": "mean"}),
    "embedding-centroid": ("embedding", {"mode": "centroid"}),
    # k, temperature and C below are defaults for single runs; the report picks them by
    # nested cross-validation over GRIDS instead.
    "embedding-outcome": ("embedding", {"mode": "outcome", "k": 100, "temperature": 0.2}),
    "outcome-cost": (
        "embedding",
        {"mode": "outcome", "k": 100, "temperature": 0.2, "cost_lambda": 0.1},
    ),
    "category": ("category", {"classifier": "logreg", "C": 10.0}),
    "category-budget": ("category", {"classifier": "logreg", "C": 10.0}),
    "category-outcome": (
        "category",
        {"classifier": "logreg", "C": 10.0, "category_scores": "(built from --train)"},
    ),
    "category-cost": (
        "category",
        {
            "classifier": "logreg",
            "C": 10.0,
            "cost_lambda": 0.1,
            "category_scores": "(built from --train)",
        },
    ),
    "skills": ("skills", {"profiles": "(built from --train)", "k": 1, "tag_top": 3}),
    "instruction": ("instruction", {"k": 1}),
}
# quality knobs searched by nested CV (inner folds pick on routed score, outer folds score)
GRIDS: dict[str, dict[str, list[Any]]] = {
    "embedding-knn": {"k": [5, 10, 30]},
    "embedding-outcome": {"k": [30, 100, 300], "temperature": [0.05, 0.2, 1.0]},
    "category-outcome": {"C": [1.0, 10.0]},
}
# presets that reuse, on each outer fold, the knobs another preset picked on that fold's
# training part (same step 1; the cost weight λ is a price knob, swept, never tuned)
SHARES: dict[str, str] = {
    "outcome-cost": "embedding-outcome",
    "category": "category-outcome",
    "category-budget": "category-outcome",
    "category-cost": "category-outcome",
}
BUDGET = 0.45  # category-budget: per-category winners among models costing at most this


def best_single(rows: Sequence[OutcomeExample]) -> str:
    models = sorted({m for r in rows for m in r.scores})
    return max(models, key=lambda m: float(np.mean([r.scores.get(m, 0.0) for r in rows])))


def best_labels(rows: Sequence[OutcomeExample], prefer: str) -> list[LabelledExample]:
    """Each query labelled with its best model (ties: the overall best, then cheapest name)."""
    out = []
    for r in rows:
        top = max(r.scores.values())
        if top <= 0:
            continue  # nobody solved it: no evidence for any label
        winners = sorted(m for m, s in r.scores.items() if s == top)
        out.append(LabelledExample(r.id, r.text, prefer if prefer in winners else winners[0]))
    return out


def fit_router(
    name: str,
    train: Sequence[OutcomeExample],
    models: dict[str, ModelInfo],
    encoders: EncoderCache,
    overrides: dict[str, Any] | None = None,
) -> Router:
    if name not in PRESETS:
        raise ConfigError(f"unknown router configuration {name!r} (known: {', '.join(PRESETS)})")
    type_name, params = PRESETS[name]
    params = {**params, **(overrides or {})}
    experts = sorted({m for r in train for m in r.scores})
    single = best_single(train)
    costs = {m: models[m].cost for m in experts if m in models}
    cats = category_map(train, costs, BUDGET if name == "category-budget" else None)
    config = offline_config(experts, single, models, cats)
    if type_name == "skills":
        params["profiles"] = "unused.json"
    with_scores = params.pop("category_scores", None) is not None
    router = build_router(type_name, params, config, encoders, name=name)
    fit: Any = router
    if type_name == "embedding" and params.get("mode") == "outcome":
        fit.fit_outcomes(train, costs)
    elif type_name == "embedding":
        fit.fit_labelled(best_labels(train, single))
    elif type_name == "category":
        fit.fit([LabelledExample(r.id, r.text, r.task or "other") for r in train])
        if with_scores:
            fit.set_category_scores(category_scores(train), costs)
    elif type_name == "skills":
        fit.load(build_profiles(train, encoders, tag_top=int(params.get("tag_top", 3))))
    elif type_name == "instruction":
        fit.fit({})
    return router


def evaluate(
    router: Router,
    train: Sequence[OutcomeExample],
    test: Sequence[OutcomeExample],
    models: dict[str, ModelInfo],
) -> dict[str, Any]:
    config = router.deps.config
    ctx = context(config)
    decisions = asyncio.run(router.route_batch([r.text for r in test], ctx))
    single = best_single(train)
    cost = {m: (models[m].cost if m in models else 0.0) for m in ctx.experts}
    chosen = [d.chosen[0] if not d.abstained else single for d in decisions]
    score = [r.scores.get(m, 0.0) for r, m in zip(test, chosen, strict=True)]
    all_models = sorted({m for r in test for m in r.scores})
    mat = np.array([[r.scores.get(m, 0.0) for m in all_models] for r in test])
    picks: dict[str, int] = {}
    for m in chosen:
        picks[m] = picks.get(m, 0) + 1
    return {
        "router": router.name,
        "n": len(test),
        "routed_score": round(float(np.mean(score)), 4),
        "best_single": single,
        "best_single_score": round(float(np.mean([r.scores.get(single, 0.0) for r in test])), 4),
        "oracle_score": round(float(mat.max(axis=1).mean()), 4),
        "random_score": round(float(mat.mean()), 4),
        "mean_cost": round(float(np.mean([cost.get(m, 0.0) for m in chosen])), 4),
        "best_single_cost": cost.get(single, 0.0),
        "abstain_rate": round(sum(d.abstained for d in decisions) / max(1, len(test)), 4),
        "picks": dict(sorted(picks.items(), key=lambda kv: -kv[1])),
    }


def scorer(
    name: str,
    models: dict[str, ModelInfo],
    encoders: EncoderCache,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """`(train, test, params) -> result` for nested CV: fit `name` on train, score test."""
    fixed = dict(overrides or {})

    def run(
        train: Sequence[OutcomeExample], test: Sequence[OutcomeExample], params: dict[str, Any]
    ) -> dict[str, Any]:
        router = fit_router(name, train, models, encoders, {**fixed, **params})
        return evaluate(router, train, test, models)

    return run


def nested(
    name: str,
    rows: Sequence[OutcomeExample],
    models: dict[str, ModelInfo],
    encoders: EncoderCache,
    grid: dict[str, list[Any]] | None = None,
    outer: int = 5,
    inner: int = 3,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> NestedResult:
    """Routed score by nested CV: `grid` (default: GRIDS[name]) chosen on inner folds only."""
    if name not in PRESETS:
        raise ConfigError(f"unknown router configuration {name!r} (known: {', '.join(PRESETS)})")
    use = GRIDS.get(name, {}) if grid is None else grid
    run = scorer(name, models, encoders, overrides)
    return nested_cv(rows, use, run, "routed_score", outer, inner, seed)


def sweep(
    name: str,
    rows: Sequence[OutcomeExample],
    models: dict[str, ModelInfo],
    encoders: EncoderCache,
    source: NestedResult,
    lambdas: Sequence[float],
) -> list[dict[str, Any]]:
    """The cost weight λ swept on `source`'s outer folds: each fold's router is fitted once
    with the quality knobs picked on its training part, then routes the test fold at every λ.
    One row per λ: means over the outer folds."""
    from coe.eval.nested import outer_splits

    per: dict[float, list[dict[str, Any]]] = {lam: [] for lam in lambdas}
    for train, test, params in outer_splits(rows, source):
        router = fit_router(name, train, models, encoders, params)
        for lam in lambdas:
            router.params = router.params.model_copy(update={"cost_lambda": lam})
            per[lam].append(evaluate(router, train, test, models))
    keys = ("routed_score", "mean_cost", "best_single_score", "best_single_cost")
    return [
        {
            "router": name,
            "cost_lambda": lam,
            **{k: round(float(np.mean([r[k] for r in res])), 4) for k in keys},
        }
        for lam, res in per.items()
    ]
