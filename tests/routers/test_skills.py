"""Symbolic-MoE skills router: profiles from real outcomes, recruiting maths, keyword LLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coe.eval.builders import build_profiles, tag_by_embedding
from coe.routing.data import OutcomeExample
from coe.routing.encoders import EncoderCache, text_hash
from coe.store import keys
from coe.store.redis_store import RedisStore

from .conftest import CountingChat, HttpChat, ctx_of, make_config, make_router

MODELS_OF_INTEREST = 9


@pytest.fixture(scope="module")
def profiles(
    encoders: EncoderCache, outcomes: tuple[list[OutcomeExample], list[OutcomeExample]]
) -> dict:
    return build_profiles(outcomes[0], encoders, vocab_size=60, tag_top=3)


@pytest.mark.embed
def test_profiles_are_plus_minus_one_sums(
    profiles: dict,
    encoders: EncoderCache,
    outcomes: tuple[list[OutcomeExample], list[OutcomeExample]],
) -> None:
    train = outcomes[0]
    vocab = profiles["vocabulary"]
    assert len(profiles["profiles"]) == MODELS_OF_INTEREST and "math" in vocab
    tags = tag_by_embedding(
        encoders.encode_sync([r.text for r in train]), encoders.encode_sync(vocab), vocab, 3
    )
    skill = max(vocab, key=lambda s: sum(s in t for t in tags))
    for model, prof in profiles["profiles"].items():
        expected = sum(
            2 * r.scores[model] - 1 for r, t in zip(train, tags, strict=True) if skill in t
        )
        assert prof.get(skill, 0.0) == pytest.approx(expected, abs=0.01)
    assert set(profiles["aggregators"]) <= {r.task for r in train}
    assert profiles["default_aggregator"] in profiles["profiles"]


@pytest.mark.embed
async def test_recruiting_follows_the_design_formula(
    profiles: dict, encoders: EncoderCache, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(profiles))
    config = make_config(sorted(profiles["profiles"]))
    router = make_router("skills", {"profiles": str(path), "k": 3}, config, encoders)
    await router.setup()
    mod = type(router).__module__
    import sys

    recruit = sys.modules[mod].recruit_weights
    gamma = router.gamma  # type: ignore[attr-defined]
    g = {m: sum(p.values()) for m, p in profiles["profiles"].items()}
    assert sum(gamma.values()) == pytest.approx(1.0)
    assert max(gamma, key=gamma.get) == max(g, key=g.get)  # sharpening keeps the order
    d = await router.route(
        "Write a Python function that returns the nth Fibonacci number.", ctx_of(config)
    )
    assert d.k == 3 and len(set(d.chosen)) == 3
    assert "no keyword LLM" in d.reason and d.details["tagging"] == "embedding"
    assert d.details["aggregator"] in profiles["profiles"]
    weights, rel = recruit(router.profiles, gamma, d.details["skills"])  # type: ignore[attr-defined]
    for m, w in weights.items():
        expected = max(rel[m], 0) * gamma[m] if any(v > 0 for v in rel.values()) else None
        if expected is not None:
            total = sum(max(rel[x], 0) * gamma[x] for x in rel)
            assert w == pytest.approx(expected / total, abs=1e-6)
    assert [c.expert for c in d.candidates][:3] == sorted(weights, key=weights.get, reverse=True)[
        :3
    ]
    sampled = make_router(
        "skills", {"profiles": str(path), "select": "sample", "seed": 1}, config, encoders
    )
    await sampled.setup()
    one = await sampled.route("What is 17 * 23?", ctx_of(config))
    two = await sampled.route("What is 17 * 23?", ctx_of(config))
    assert one.chosen == two.chosen and "sampled" in one.reason


@pytest.mark.embed
@pytest.mark.vllm
@pytest.mark.redis
async def test_keyword_llm_is_real_and_cached(
    profiles: dict, encoders: EncoderCache, vllm_expert, redis_store: RedisStore, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(profiles))
    experts = sorted(profiles["profiles"])
    config = make_config([*experts, "kw"], url=vllm_expert.base_url, model=vllm_expert.model)
    chat = CountingChat(HttpChat(config))
    params = {"profiles": str(path), "keyword_expert": "kw", "samples": 3, "max_tokens": 24}
    router = make_router("skills", params, config, encoders, store=redis_store, chat=chat)
    await router.setup()
    query = "What is the derivative of x squared times sine of x?"
    first = await router.route(query, ctx_of(config))
    assert len(chat.calls) == 3 and all(e == "kw" for e, _ in chat.calls)
    assert all(c.expert != "kw" for c in first.candidates)  # kw has no profile: not recruited
    cached = await redis_store.get(keys.keywords_cache(text_hash(f"kw\n{query}")))
    assert cached is not None and json.loads(cached) == first.details["keywords"]
    second = await router.route(query, ctx_of(config))
    assert len(chat.calls) == 3  # served from the store: no new LLM call
    assert second.chosen == first.chosen
    assert first.details["tagging"] in ("llm", "embedding (keyword LLM gave no usable keywords)")
    assert np.isclose(sum(c.score for c in first.candidates), 1.0, atol=1e-3)
