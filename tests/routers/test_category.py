"""The CoE two-step category router: classifier, category map, generalist fallback, map CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from coe.cli.build import build_group
from coe.eval.builders import category_map, category_scores
from coe.routing.data import LabelledExample, OutcomeExample, load_models
from coe.routing.encoders import EncoderCache

from .conftest import ctx_of, make_config, make_router

pytestmark = pytest.mark.embed


@pytest.mark.parametrize("classifier", ["logreg", "knn", "centroid"])
async def test_classifies_mmlu_and_maps_to_experts(
    classifier: str,
    encoders: EncoderCache,
    mmlu: tuple[list[LabelledExample], list[LabelledExample]],
) -> None:
    train, test = mmlu
    categories = {
        "math": ["math-tutor"],
        "physics": ["math-tutor"],
        "law": ["lawyer"],
        "computer science": ["coder"],
    }
    config = make_config(["generalist", "math-tutor", "coder", "lawyer"], categories=categories)
    router = make_router("category", {"classifier": classifier}, config, encoders)
    router.fit(train)  # type: ignore[attr-defined]
    ds = await router.route_batch([e.text for e in test], ctx_of(config))
    acc = np.mean([d.category == e.label for d, e in zip(ds, test, strict=True)])
    assert acc > 0.45
    for d in ds:
        if d.category == "law":
            assert d.chosen == ["lawyer"] and "law" in d.reason
        if d.category == "history":  # no expert for history: the generalist, and it says so
            assert d.chosen == ["generalist"] and "no expert" in d.reason


async def test_knn_on_an_approximate_index_classifies_like_exact(
    encoders: EncoderCache,
    mmlu: tuple[list[LabelledExample], list[LabelledExample]],
) -> None:
    train, test = mmlu
    config = make_config(["generalist"])
    got = {}
    for index in ("exact", "approximate"):
        router = make_router(
            "category",
            {"classifier": "knn", "index": index, "min_similarity": 0.1},
            config,
            encoders,
        )
        router.fit(train)  # type: ignore[attr-defined]
        q = encoders.encode_sync([e.text for e in test])
        probs, nearest = router.probabilities(q)  # type: ignore[attr-defined]
        got[index] = (probs.argmax(axis=1), nearest)
    agree = np.mean(got["exact"][0] == got["approximate"][0])
    assert agree >= 0.95, agree
    assert np.allclose(got["exact"][1], got["approximate"][1], atol=1e-5)  # nearest example
    auto = make_router("category", {"approximate_from": 10}, config, encoders)
    auto.fit(train)  # type: ignore[attr-defined]
    assert type(auto._index).__name__ == "IVFIndex"  # type: ignore[attr-defined]


async def test_low_confidence_goes_to_the_generalist(
    encoders: EncoderCache, mmlu: tuple[list[LabelledExample], list[LabelledExample]]
) -> None:
    train, test = mmlu
    config = make_config(["generalist", "math-tutor"], categories={"math": ["math-tutor"]})
    sure = make_router("category", {"min_confidence": 0.0}, config, encoders)
    sure.fit(train)  # type: ignore[attr-defined]
    strict = make_router("category", {"min_confidence": 0.9}, config, encoders)
    strict.fit(train)  # type: ignore[attr-defined]
    entropy = make_router("category", {"max_entropy": 0.05, "classifier": "knn"}, config, encoders)
    entropy.fit(train)  # type: ignore[attr-defined]
    math_q = next(e.text for e in test if e.label == "math")
    assert "generalist" not in (await sure.route(math_q, ctx_of(config))).reason
    d = await strict.route(math_q, ctx_of(config))
    assert d.chosen == ["generalist"] and "low confidence" in d.reason
    assert d.details["low_confidence"].startswith("max probability")
    e = await entropy.route(math_q, ctx_of(config))
    assert e.chosen == ["generalist"] and "entropy" in e.reason
    abstain = make_router(
        "category", {"min_confidence": 0.9, "on_low_confidence": "abstain"}, config, encoders
    )
    abstain.fit(train)  # type: ignore[attr-defined]
    assert (await abstain.route(math_q, ctx_of(config))).abstained


async def test_expected_score_mode_uses_outcome_tables(
    encoders: EncoderCache,
    data_dir: Path,
    outcomes: tuple[list[OutcomeExample], list[OutcomeExample]],
) -> None:
    train, test = outcomes
    models = load_models(data_dir / "llmrouter" / "models.json")
    costs = {m: i.cost for m, i in models.items()}
    config = make_config(sorted(models), costs=costs)
    router = make_router("category", {"C": 10.0}, config, encoders)
    router.fit([LabelledExample(r.id, r.text, r.task) for r in train])  # type: ignore[attr-defined]
    router.set_category_scores(category_scores(train))  # type: ignore[attr-defined]
    ds = await router.route_batch([r.text for r in test], ctx_of(config))
    routed = np.mean([r.scores[d.chosen[0]] for r, d in zip(test, ds, strict=True)])
    random_score = np.mean([np.mean(list(r.scores.values())) for r in test])
    assert routed > random_score + 0.05 and "expected" in ds[0].reason
    cheap = make_router("category", {"C": 10.0, "cost_lambda": 1.0}, config, encoders)
    cheap.fit([LabelledExample(r.id, r.text, r.task) for r in train])  # type: ignore[attr-defined]
    cheap.set_category_scores(category_scores(train))  # type: ignore[attr-defined]
    cheap_ds = await cheap.route_batch([r.text for r in test], ctx_of(config))
    assert np.mean([costs[d.chosen[0]] for d in cheap_ds]) < np.mean(
        [costs[d.chosen[0]] for d in ds]
    )


def test_category_map_picks_the_best_expert_per_task(
    outcomes: tuple[list[OutcomeExample], list[OutcomeExample]],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    train, _ = outcomes
    table = category_map(train)
    for task, (winner,) in table.items():
        rows = [r for r in train if r.task == task]
        means = {m: np.mean([r.scores[m] for r in rows]) for m in rows[0].scores}
        assert means[winner] == pytest.approx(max(means.values()))
    data = data_dir / "llmrouter"
    result = CliRunner().invoke(
        build_group,
        [
            "category-map",
            "--outcomes",
            str(data / "train.jsonl"),
            "--models",
            str(data / "models.json"),
            "--budget",
            "0.2",
            "--scores-out",
            str(tmp_path / "s.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.output.split("wrote")[0])
    costs = {m: i.cost for m, i in load_models(data / "models.json").items()}
    assert len(doc["categories"]) == 14
    assert all(costs[e] <= 0.2 for experts in doc["categories"].values() for e in experts)
    assert (tmp_path / "s.json").exists()


async def test_mlp_with_extra_examples_fits_and_serves(
    tmp_path: Path,
    data_dir: Path,
    encoders: EncoderCache,
    mmlu: tuple[list[LabelledExample], list[LabelledExample]],
) -> None:
    """`classifier: mlp` plus `extra_examples` (MMLU rows mapped to categories) through
    setup(): the extra rows of known categories join the training set, others are left out."""
    from coe.eval.extra import load_mmlu
    from coe.routing.data import write_jsonl

    train, test = mmlu
    write_jsonl(
        [{"id": e.id, "text": e.text, "category": e.label} for e in train], tmp_path / "t.jsonl"
    )
    extra = load_mmlu(data_dir / "mmlu" / "mmlu.jsonl")
    rows = [{"id": e.id, "text": e.text, "category": e.label} for e in extra]
    rows.append({"id": "odd", "text": "How do I bake bread?", "category": "cooking"})
    write_jsonl(rows, tmp_path / "extra.jsonl")
    config = make_config(["generalist", "lawyer"], categories={"law": ["lawyer"]})
    params = {"classifier": "mlp", "examples": "t.jsonl", "extra_examples": "extra.jsonl"}
    router = make_router("category", params, config, encoders, base_dir=tmp_path)
    await router.setup()
    fitted: Any = router
    assert type(fitted._clf).__name__ == "MLPClassifier"
    assert len(fitted._label_idx) == len(train) + len(extra)  # "cooking" is not a known category
    assert "cooking" not in fitted.labels
    ds = await router.route_batch([e.text for e in test], ctx_of(config))
    acc = np.mean([d.category == e.label for d, e in zip(ds, test, strict=True)])
    assert acc > 0.45
    law = [d for d in ds if d.category == "law"]
    assert law and all(d.chosen == ["lawyer"] for d in law)


def test_unknown_classifier_is_a_clear_error(encoders: EncoderCache) -> None:
    from coe.routing import ConfigError

    config = make_config(["generalist"])
    with pytest.raises((ConfigError, ValueError), match="classifier"):
        make_router("category", {"classifier": "forest", "routes": {}}, config, encoders)
