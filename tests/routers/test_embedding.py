"""The embedding router on real embeddings: kNN/centroid labels, thresholds, outcome mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coe.errors import ConfigError
from coe.routing.data import LabelledExample, OutcomeExample, load_labelled, load_models
from coe.routing.encoders import EncoderCache

from .conftest import ctx_of, make_config, make_router

pytestmark = pytest.mark.embed


def _category_setup(labels: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    experts = [f"e{i}" for i in range(len(labels))]
    return {lab: [e] for lab, e in zip(labels, experts, strict=True)}, experts


@pytest.mark.parametrize("mode", ["knn", "centroid"])
async def test_routes_mmlu_categories_through_the_category_map(
    mode: str, encoders: EncoderCache, mmlu: tuple[list[LabelledExample], list[LabelledExample]]
) -> None:
    train, test = mmlu
    cats, experts = _category_setup(sorted({e.label for e in train if e.label}))
    config = make_config(experts, categories=cats)
    router = make_router("embedding", {"mode": mode, "k": 3}, config, encoders)
    router.fit_labelled(train)  # type: ignore[attr-defined]
    decisions = await router.route_batch([e.text for e in test], ctx_of(config))
    acc = np.mean([d.category == e.label for d, e in zip(decisions, test, strict=True)])
    assert acc > 0.45  # 14 classes: chance is 0.07
    d = decisions[0]
    assert d.chosen == cats[d.category or ""] and not d.abstained
    assert sum(c.score for c in d.candidates) == pytest.approx(1.0, abs=1e-3)
    assert [c.score for c in d.candidates] == sorted((c.score for c in d.candidates), reverse=True)


async def test_healthcare_threshold_abstains_on_unrelated_utterances(
    encoders: EncoderCache, data_dir: Path
) -> None:
    path = data_dir / "healthcare_routes" / "evaluation.csv"
    train = load_labelled(path, "train")
    cats, experts = _category_setup(sorted({e.label for e in train if e.label}))
    config = make_config(experts, categories=cats)
    params = {"examples": str(path), "split": "train", "mode": "knn", "k": 3, "threshold": 0.46}
    router = make_router("embedding", params, config, encoders)
    await router.setup()
    test = load_labelled(path, "test") + load_labelled(path, "validation")
    decisions = await router.route_batch([e.text for e in test], ctx_of(config))
    nones = [d for d, e in zip(decisions, test, strict=True) if e.label is None]
    routed = [(d, e) for d, e in zip(decisions, test, strict=True) if e.label is not None]
    assert len(nones) == 13 and sum(d.abstained for d in nones) >= 8
    assert "threshold" in next(d for d in nones if d.abstained).reason
    right = sum(d.category in (e.label, *e.alternates) for d, e in routed)
    assert right / len(routed) > 0.6
    # without the threshold the same utterances are forced onto some route
    loose = make_router("embedding", {**params, "threshold": None}, config, encoders)
    await loose.setup()
    assert not any(
        d.abstained for d in await loose.route_batch([e.text for e in test], ctx_of(config))
    )


async def test_per_label_threshold_and_inline_routes(encoders: EncoderCache) -> None:
    config = make_config(["billing", "tech"])
    routes = {
        "billing": ["refund my invoice", "why was my card charged twice"],
        "tech": ["the app crashes on start", "reset my password please"],
    }
    router = make_router(
        "embedding", {"routes": routes, "thresholds": {"tech": 0.99}}, config, encoders
    )
    await router.setup()
    billing = await router.route("I was charged twice on my card", ctx_of(config))
    assert billing.chosen == ["billing"] and billing.category is None
    tech = await router.route("my app keeps crashing", ctx_of(config))
    assert tech.abstained and "'tech'" in tech.reason


async def test_outcome_mode_predicts_scores_and_lambda_trades_cost(
    encoders: EncoderCache,
    data_dir: Path,
    outcomes: tuple[list[OutcomeExample], list[OutcomeExample]],
) -> None:
    train, test = outcomes
    models = load_models(data_dir / "llmrouter" / "models.json")
    costs = {m: info.cost for m, info in models.items()}
    config = make_config(sorted(models), costs=costs)
    results = {}
    for lam in (0.0, 0.5):
        router = make_router(
            "embedding",
            {"mode": "outcome", "k": 20, "temperature": 0.2, "cost_lambda": lam},
            config,
            encoders,
        )
        router.fit_outcomes(train)  # type: ignore[attr-defined]
        ds = await router.route_batch([r.text for r in test], ctx_of(config))
        results[lam] = (
            np.mean([r.scores[d.chosen[0]] for r, d in zip(test, ds, strict=True)]),
            np.mean([costs[d.chosen[0]] for d in ds]),
        )
        assert set(ds[0].details["predicted"]) == set(models)
    random_score = np.mean([np.mean(list(r.scores.values())) for r in test])
    assert results[0.0][0] > random_score + 0.05
    assert results[0.5][1] < results[0.0][1]  # cost weight moves choices to cheaper models


async def test_bad_params_and_missing_examples_are_config_errors(
    encoders: EncoderCache, tmp_path: Path
) -> None:
    config = make_config(["a", "b"])
    with pytest.raises(ConfigError, match="unknown key"):
        make_router("embedding", {"mode": "knn", "kk": 3}, config, encoders)
    with pytest.raises(ConfigError, match="examples"):
        await make_router("embedding", {}, config, encoders).setup()
    f = tmp_path / "ex.jsonl"
    f.write_text(json.dumps({"text": "hello", "label": None}) + "\n")
    with pytest.raises(ConfigError, match="no labelled examples"):
        await make_router("embedding", {"examples": str(f)}, config, encoders).setup()
