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


def _task_examples(rows: list[OutcomeExample]) -> list[LabelledExample]:
    return [LabelledExample(r.id, r.text, r.task) for r in rows]


async def test_approximate_index_routes_the_slice_like_exact(
    encoders: EncoderCache, outcomes: tuple[list[OutcomeExample], list[OutcomeExample]]
) -> None:
    train, test = outcomes
    tasks = sorted({r.task for r in train if r.task})
    config = make_config(tasks)
    queries = [r.text for r in test]
    knn, predicted = {}, {}
    for kind in ("exact", "approximate"):
        router = make_router("embedding", {"k": 5, "index": kind}, config, encoders)
        router.fit_labelled(_task_examples(train))  # type: ignore[attr-defined]
        decisions = await router.route_batch(queries, ctx_of(config))
        assert {d.details["index"] for d in decisions} == {"exact" if kind == "exact" else "ivf"}
        knn[kind] = [d.chosen[0] for d in decisions]
        perf = make_router(
            "embedding", {"mode": "outcome", "k": 10, "index": kind}, config, encoders
        )
        perf.fit_outcomes(train)  # type: ignore[attr-defined]
        predicted[kind] = perf.predict_outcomes(  # type: ignore[attr-defined]
            encoders.encode_sync(queries)
        )
    accuracy = np.mean([c == r.task for c, r in zip(knn["exact"], test, strict=True)])
    agree = np.mean([a == b for a, b in zip(knn["exact"], knn["approximate"], strict=True)])
    assert accuracy > 0.6 and agree >= 0.97
    same_best = predicted["exact"].argmax(axis=1) == predicted["approximate"].argmax(axis=1)
    assert np.mean(same_best) >= 0.95


async def test_auto_index_switches_at_approximate_from(encoders: EncoderCache) -> None:
    config = make_config(["billing", "tech"])
    routes = {
        "billing": ["refund my invoice", "why was my card charged twice"],
        "tech": ["the app crashes on start", "reset my password please", "wifi is down"],
    }
    for threshold, expected in ((6, "exact"), (5, "ivf")):
        params = {"routes": routes, "approximate_from": threshold}
        router = make_router("embedding", params, config, encoders)
        await router.setup()
        assert router.describe_index()["index"] == expected  # type: ignore[attr-defined]
        d = await router.route("I was charged twice on my card", ctx_of(config))
        assert d.chosen == ["billing"] and d.details["index"] == expected
    centroid = make_router(
        "embedding",
        {"routes": routes, "mode": "centroid", "index": "approximate"},
        config,
        encoders,
    )
    await centroid.setup()
    assert centroid.describe_index() == {"index": "exact", "size": 2}  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="index"):
        make_router("embedding", {"routes": routes, "index": "hnsw"}, config, encoders)


def test_label_scores_from_neighbours_match_the_exact_per_label_path() -> None:
    from routers._common import per_label_neighbours, per_label_topk

    rng = np.random.default_rng(3)
    sims = rng.uniform(-1, 1, (20, 50)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    labels[labels == 3] = 2  # label 3 has no example: -1 either way
    order = np.argsort(-sims, axis=1)
    near = np.take_along_axis(sims, order, axis=1)
    for agg in ("mean", "max"):
        want = per_label_topk(sims, labels, 4, 5, agg)
        got = per_label_neighbours(near, order, labels, 4, 5, agg)  # every example retrieved
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # only the 3 best retrieved: labels missing from them score -1; a label found fewer
    # than k times is padded with the lowest similarity retrieved
    got = per_label_neighbours(near[:, :3], order[:, :3], labels, 4, 2, "mean")
    for i in range(20):
        top = labels[order[i, :3]]
        for j in range(4):
            mine = near[i, :3][top == j][:2]
            if len(mine) == 0:
                assert got[i, j] == -1
            else:
                padded = np.concatenate([mine, [near[i, 2]] * (2 - len(mine))])
                assert got[i, j] == pytest.approx(float(padded.mean()), abs=1e-5)
