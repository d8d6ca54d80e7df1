"""k-fold cross-validation of a named router configuration on one data file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from coe.routing.data import kfold, load_labelled, load_models, load_outcomes
from coe.routing.encoders import EncoderCache


def run_kfold(
    kind: str,
    data: Path,
    router: str,
    encoders: EncoderCache,
    folds: int = 5,
    seed: int = 0,
    models_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    warm: bool = True,
) -> dict[str, Any]:
    if kind == "outcomes":
        from coe.eval import outcomes

        rows = load_outcomes(data)
        mpath = models_path or data.with_name("models.json")
        models = load_models(mpath) if mpath.exists() else {}
        if warm:
            from coe.eval.embcache import warm as warm_cache

            warm_cache(encoders, [r.text for r in rows])
        per = [
            outcomes.evaluate(
                outcomes.fit_router(router, a, models, encoders, overrides), a, b, models
            )
            for a, b in kfold(rows, folds, seed)
        ]
        keys = [
            "routed_score",
            "best_single_score",
            "oracle_score",
            "random_score",
            "mean_cost",
            "best_single_cost",
        ]
    else:
        from coe.eval import categories

        items = load_labelled(data)
        if warm:
            from coe.eval.embcache import warm as warm_cache

            warm_cache(encoders, [e.text for e in items])
        per = [
            categories.evaluate(router, a, b, encoders, overrides=overrides)
            for a, b in kfold(items, folds, seed)
        ]
        keys = ["accuracy", "abstain_rate"]
    mean = {k: round(float(np.mean([p[k] for p in per])), 4) for k in keys}
    std = {f"{k}_std": round(float(np.std([p[k] for p in per])), 4) for k in keys[:1]}
    return {
        "router": router,
        "kind": kind,
        "folds": folds,
        "seed": seed,
        "n": sum(p["n"] for p in per),
        **mean,
        **std,
        "per_fold": [{k: p[k] for k in keys} for p in per],
    }
