"""Symbolic-MoE skills router: profiles from real outcomes, recruiting maths, keyword LLM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from coe.eval.builders import build_profiles, tag_by_embedding
from coe.experts.schema import CoeConfig
from coe.routing.base import Router
from coe.routing.data import OutcomeExample
from coe.routing.encoders import EncoderCache, text_hash
from coe.store import keys
from coe.store.base import Store
from coe.store.redis_store import RedisStore
from coe.testing import FakeUpstream

if TYPE_CHECKING:
    from tests.conftest import LiveExpert

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


KEYWORDS = "calculus, derivatives, trigonometry"
QUERY = "What is the derivative of x squared times sine of x?"


@pytest.fixture
def keyword_upstream() -> Iterator[FakeUpstream]:
    """The keyword expert: a real HTTP server answering every request with `reply`."""
    with FakeUpstream("kw") as up:
        yield up


def keyword_router(
    profiles: dict, encoders: EncoderCache, tmp_path: Path, url: str, store: Store | None = None
) -> tuple[Router, CountingChat, CoeConfig]:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(profiles))
    experts = sorted(profiles["profiles"])
    config = make_config([*experts, "kw"], url=url, model="kw")
    chat = CountingChat(HttpChat(config))
    params = {"profiles": str(path), "keyword_expert": "kw", "samples": 3, "max_tokens": 24}
    return make_router("skills", params, config, encoders, store=store, chat=chat), chat, config


@pytest.mark.embed
@pytest.mark.redis
async def test_keyword_llm_path_is_taken_and_cached(
    profiles: dict,
    encoders: EncoderCache,
    keyword_upstream: FakeUpstream,
    redis_store: RedisStore,
    tmp_path: Path,
) -> None:
    keyword_upstream.state.reply = KEYWORDS
    router, chat, config = keyword_router(
        profiles, encoders, tmp_path, keyword_upstream.base_url, redis_store
    )
    await router.setup()
    first = await router.route(QUERY, ctx_of(config))
    assert first.details["tagging"] == "llm", first.reason
    assert "skills from keyword LLM kw" in first.reason
    assert first.details["keywords"] == ["calculus", "derivatives", "trigonometry"]
    # the skills are the keywords mapped onto the profile vocabulary, not the embedding tags
    mapped = await router.map_keywords(first.details["keywords"])  # type: ignore[attr-defined]
    assert mapped and first.details["skills"] == mapped
    assert set(mapped) <= set(profiles["vocabulary"])
    # three samples, each a real request carrying the query in the keyword prompt
    assert keyword_upstream.state.requests == 3 and len(chat.calls) == 3
    assert all(e == "kw" for e, _ in chat.calls)
    assert all(QUERY in b["messages"][-1]["content"] for b in keyword_upstream.state.bodies)
    assert all(c.expert != "kw" for c in first.candidates)  # kw has no profile: not recruited
    assert np.isclose(sum(c.score for c in first.candidates), 1.0, atol=1e-3)
    cached = await redis_store.get(keys.router_cache("keywords", text_hash(f"kw\n{QUERY}")))
    assert cached is not None and json.loads(cached) == first.details["keywords"]
    second = await router.route(QUERY, ctx_of(config))
    assert keyword_upstream.state.requests == 3  # served from the store: no new LLM call
    assert second.chosen == first.chosen and second.details["tagging"] == "llm"


@pytest.mark.embed
async def test_keyword_llm_prose_falls_back_to_embedding_tags(
    profiles: dict, encoders: EncoderCache, keyword_upstream: FakeUpstream, tmp_path: Path
) -> None:
    keyword_upstream.state.reply = "This question needs a good grasp of several advanced topics."
    router, chat, config = keyword_router(profiles, encoders, tmp_path, keyword_upstream.base_url)
    await router.setup()
    d = await router.route(QUERY, ctx_of(config))
    assert len(chat.calls) == 3  # the LLM was asked, and answered prose
    assert d.details["tagging"] == "embedding (keyword LLM gave no usable keywords)"
    assert d.details["keywords"] == []
    q = await encoders.encode([QUERY])
    assert d.details["skills"] == router.tag(q)[0]  # type: ignore[attr-defined]
    assert all(c.expert != "kw" for c in d.candidates)


@pytest.mark.embed
@pytest.mark.vllm
@pytest.mark.redis
async def test_real_keyword_model_is_called_and_cached(
    profiles: dict,
    encoders: EncoderCache,
    vllm_expert: LiveExpert,
    redis_store: RedisStore,
    tmp_path: Path,
) -> None:
    """The real small model as keyword expert: asked, cached, and its decision well formed.
    Whether its keywords are usable depends on the model; the path itself is asserted above."""
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(profiles))
    experts = sorted(profiles["profiles"])
    config = make_config([*experts, "kw"], url=vllm_expert.base_url, model=vllm_expert.model)
    chat = CountingChat(HttpChat(config))
    params = {"profiles": str(path), "keyword_expert": "kw", "samples": 3, "max_tokens": 24}
    router = make_router("skills", params, config, encoders, store=redis_store, chat=chat)
    await router.setup()
    first = await router.route(QUERY, ctx_of(config))
    assert len(chat.calls) == 3 and all(e == "kw" for e, _ in chat.calls)
    assert all(c.expert != "kw" for c in first.candidates)
    cached = await redis_store.get(keys.router_cache("keywords", text_hash(f"kw\n{QUERY}")))
    assert cached is not None and json.loads(cached) == first.details["keywords"]
    second = await router.route(QUERY, ctx_of(config))
    assert len(chat.calls) == 3  # served from the store: no new LLM call
    assert second.chosen == first.chosen
    if first.details["keywords"] and first.details["tagging"] == "llm":
        assert first.details["skills"] == await router.map_keywords(first.details["keywords"])  # type: ignore[attr-defined]
    assert np.isclose(sum(c.score for c in first.candidates), 1.0, atol=1e-3)
