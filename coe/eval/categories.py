"""Evaluate category routing (and abstention) on labelled text: MMLU-Pro, route CSVs.

Each label becomes a category served by its own expert, so the real routers run
unchanged; a label of None means the router should abstain (or fall back).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from coe.errors import ConfigError
from coe.eval.harness import build_router, context, offline_config
from coe.eval.nested import NestedResult, nested_cv
from coe.routing.base import Router
from coe.routing.data import LabelledExample
from coe.routing.decision import RouteDecision
from coe.routing.encoders import EncoderCache

GRID = [round(0.2 + 0.02 * i, 2) for i in range(30)]  # cosine thresholds 0.2 .. 0.78

# name -> (router type, params, (param calibrated on --calibrate data, grid) or None)
PRESETS: dict[str, tuple[str, dict[str, Any], tuple[str, list[float]] | None]] = {
    "category": ("category", {"classifier": "logreg", "C": 10.0}, None),
    "category-knn": ("category", {"classifier": "knn", "k": 5}, None),
    "category-centroid": ("category", {"classifier": "centroid"}, None),
    "category-mlp": ("category", {"classifier": "mlp", "hidden": 256, "alpha": 1e-3}, None),
    "category-abstain": (
        "category",
        {"classifier": "logreg", "C": 10.0, "on_low_confidence": "abstain"},
        ("min_similarity", GRID),
    ),
    "embedding-knn": (
        "embedding",
        {"mode": "knn", "k": 3, "aggregate": "mean"},
        ("threshold", GRID),
    ),
    "embedding-centroid": ("embedding", {"mode": "centroid"}, ("threshold", GRID)),
}


# the quality knobs nested cross-validation searches (inner folds pick; outer folds score)
GRIDS: dict[str, dict[str, list[Any]]] = {
    "category": {"C": [1.0, 10.0, 100.0]},
    "category-knn": {"k": [3, 5, 10]},
    "category-centroid": {},
    "category-mlp": {"alpha": [1e-3, 1e-1]},
    "category-abstain": {"C": [1.0, 10.0, 100.0]},
    "embedding-knn": {"k": [1, 3, 5, 10]},
    "embedding-centroid": {},
}
# with ~4,000 extra training rows each fit costs ~10x more: a shorter grid
GRIDS_WITH_EXTRA: dict[str, dict[str, list[Any]]] = {"category": {"C": [1.0, 3.0]}}


def nested(
    name: str,
    items: Sequence[LabelledExample],
    encoders: EncoderCache,
    grid: dict[str, list[Any]] | None = None,
    outer: int = 5,
    inner: int = 3,
    seed: int = 0,
    extra_train: Sequence[LabelledExample] = (),
    overrides: dict[str, Any] | None = None,
) -> NestedResult:
    """Accuracy by nested CV: `grid` (default: GRIDS[name]) chosen on inner folds only."""
    if name not in PRESETS:
        raise ConfigError(f"unknown router configuration {name!r} (known: {', '.join(PRESETS)})")
    fixed = dict(overrides or {})

    def run(a: Sequence[Any], b: Sequence[Any], params: dict[str, Any]) -> dict[str, Any]:
        return evaluate(name, a, b, encoders, overrides={**fixed, **params})

    use = GRIDS.get(name, {}) if grid is None else grid
    return nested_cv(items, use, run, "accuracy", outer, inner, seed, extra_train)


def fit_router(
    name: str,
    train: Sequence[LabelledExample],
    encoders: EncoderCache,
    overrides: dict[str, Any] | None = None,
) -> Router:
    if name not in PRESETS:
        raise ConfigError(f"unknown router configuration {name!r} (known: {', '.join(PRESETS)})")
    type_name, params, _ = PRESETS[name]
    labels = sorted({e.label for e in train if e.label})
    experts = [f"expert-{i}" for i in range(len(labels))]
    cats = {lab: [e] for lab, e in zip(labels, experts, strict=True)}
    config = offline_config(experts, experts[0], categories=cats)
    router = build_router(type_name, {**params, **(overrides or {})}, config, encoders, name=name)
    fit: Any = router
    if type_name == "embedding":
        fit.fit_labelled(train)
    else:
        fit.fit(train)
    return router


def predicted(d: RouteDecision) -> str | None:
    """The category a decision names, or None when it abstained / fell back for low confidence."""
    if d.abstained or "low_confidence" in d.details:
        return None
    return d.category


def decide(router: Router, items: Sequence[LabelledExample], **overrides: Any) -> list[str | None]:
    if overrides:
        router.params = router.params.model_copy(update=overrides)
    ctx = context(router.deps.config)
    decisions = asyncio.run(router.route_batch([e.text for e in items], ctx))
    return [predicted(d) for d in decisions]


def calibrate(name: str, router: Router, items: Sequence[LabelledExample]) -> dict[str, float]:
    """Pick the abstention knob that maximises accuracy on calibration items (ties: lowest)."""
    knob = PRESETS[name][2]
    if knob is None or not items:
        return {}
    param, grid = knob
    best = max(
        grid, key=lambda v: (score(items, decide(router, items, **{param: v}))["accuracy"], -v)
    )
    router.params = router.params.model_copy(update={param: best})
    return {param: best}


def score(items: Sequence[LabelledExample], preds: Sequence[str | None]) -> dict[str, Any]:
    ok = [p == e.label for e, p in zip(items, preds, strict=True)]
    lenient = [
        p == e.label or (p is not None and p in e.alternates)
        for e, p in zip(items, preds, strict=True)
    ]
    per: dict[str, list[bool]] = defaultdict(list)
    for e, good in zip(items, ok, strict=True):
        per[e.label or "(abstain)"].append(good)
    none_items = [p for e, p in zip(items, preds, strict=True) if e.label is None]
    out: dict[str, Any] = {
        "n": len(items),
        "accuracy": round(float(np.mean(ok)), 4),
        "per_category": {c: round(float(np.mean(v)), 3) for c, v in sorted(per.items())},
        "abstain_rate": round(sum(p is None for p in preds) / max(1, len(items)), 4),
    }
    if none_items or any(e.alternates for e in items):
        out["accuracy_with_alternates"] = round(float(np.mean(lenient)), 4)
    if none_items:
        out["abstain_recall"] = round(sum(p is None for p in none_items) / len(none_items), 4)
        wrong = Counter(p for p in none_items if p is not None)
        out["should_abstain_routed_to"] = dict(wrong)
    return out


def evaluate(
    name: str,
    train: Sequence[LabelledExample],
    test: Sequence[LabelledExample],
    encoders: EncoderCache,
    calib: Sequence[LabelledExample] = (),
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    router = fit_router(name, train, encoders, overrides)
    chosen = calibrate(name, router, calib)
    result = {"router": name, **score(test, decide(router, test))}
    if chosen:
        result["calibrated"] = chosen
    return result
