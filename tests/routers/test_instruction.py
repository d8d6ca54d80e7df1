"""GLIDER instruction router: expert instructions, the real instruction LLM, the store cache,
dynamic k over its probabilities, and a weak instruction writer noticed (a FakeUpstream
writer answering nonsense or a good instruction; the real encoder)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coe.dispatch import ExpertClient
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import Target, build_engine
from coe.routing.dynamic_k import dynamic_k
from coe.routing.encoders import EncoderCache, text_hash
from coe.store import keys
from coe.store.embedded import EmbeddedStore
from coe.store.redis_store import RedisStore
from coe.testing import FakeUpstream
from tests.conftest import LiveExpert

from .conftest import CountingChat, HttpChat, ctx_of, make_config, make_router

REPO = Path(__file__).resolve().parents[2]

INSTRUCTIONS = {
    "coder": "The task is to write or fix a computer program in Python.",
    "math-tutor": "The task is to solve a mathematics problem and give the number.",
    "lawyer": "The task is to answer a question about law, contracts and courts.",
}


@pytest.fixture
def instructions_file(tmp_path: Path) -> Path:
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(INSTRUCTIONS))
    return path


@pytest.mark.embed
async def test_without_llm_the_query_is_embedded(
    encoders: EncoderCache, instructions_file: Path
) -> None:
    config = make_config(["coder", "math-tutor", "lawyer", "generalist"])
    router = make_router("instruction", {"instructions": str(instructions_file)}, config, encoders)
    await router.setup()
    d = await router.route("Write a Python function that reverses a linked list", ctx_of(config))
    assert d.chosen[0] == "coder" and d.k == 2 and "no instruction LLM" in d.reason
    assert d.details["expert_instruction_source"]["generalist"] == "description"
    assert sum(c.score for c in d.candidates) == pytest.approx(1.0, abs=1e-3)
    law = await router.route("Can my landlord break the lease contract early?", ctx_of(config))
    assert law.chosen[0] == "lawyer"
    # dynamic k over the router's probabilities: tiny tau -> 1 expert; tau near 1 -> more
    assert dynamic_k(d, tau=0.05, max_k=3).k == 1
    wide = dynamic_k(d, tau=0.9999, max_k=3)
    assert wide.k > 1 and wide.k <= 3 and wide.details["dynamic_k"]["k"] == wide.k
    flat = make_router(
        "instruction", {"instructions": str(instructions_file), "alpha": 0.1}, config, encoders
    )
    await flat.setup()
    assert dynamic_k(await flat.route("hello", ctx_of(config)), tau=0.4, max_k=4).k == 2


@pytest.mark.embed
@pytest.mark.vllm
@pytest.mark.redis
async def test_instruction_is_written_once_then_cached(
    encoders: EncoderCache,
    instructions_file: Path,
    vllm_expert: LiveExpert,
    redis_store: RedisStore,
) -> None:
    config = make_config(
        ["coder", "math-tutor", "lawyer", "writer"],
        url=vllm_expert.base_url,
        model=vllm_expert.model,
    )
    chat = CountingChat(HttpChat(config))
    params = {
        "instructions": str(instructions_file),
        "instruction_expert": "writer",
        "max_tokens": 32,
    }
    router = make_router("instruction", params, config, encoders, store=redis_store, chat=chat)
    await router.setup()
    query = "Compute the sum of the integers from 1 to 100."
    first = await router.route(query, ctx_of(config))
    assert len(chat.calls) == 1 and chat.calls[0][0] == "writer"
    written = first.details["instruction"]
    assert written and written == " ".join(chat.calls[0][1].split())
    assert (
        await redis_store.get(keys.router_cache("instruction", text_hash(f"writer\n{query}")))
        == written
    )
    second = await router.route(query, ctx_of(config))
    assert len(chat.calls) == 1  # the repeated query cost no LLM call
    assert second.details["instruction"] == written and second.chosen == first.chosen
    other = await router.route("Reverse a string in Python.", ctx_of(config))
    assert len(chat.calls) == 2 and other.details["instruction"] != written


# What SmolLM2-135M wrote for this request (the issue), and what a capable writer writes.
QUERY = "Translate good morning into French."
NONSENSE = "Je suis le début de la nuit"
GOOD = "The task is to translate the English greeting good morning into French."
CODE_QUERY = "Reverse a string in Python."
CODE = "The task is to write Python code that reverses a string."


@pytest.fixture
def writer() -> Iterator[FakeUpstream]:
    with FakeUpstream("writer") as fake:
        yield fake


def writer_router(
    writer: FakeUpstream, instructions_file: Path, encoders: EncoderCache, **params: object
) -> tuple[CoeConfig, Any]:
    config = make_config(["coder", "math-tutor", "lawyer", "writer"], url=writer.base_url)
    chat = HttpChat(config)
    all_params = {"instructions": str(instructions_file), "instruction_expert": "writer", **params}
    return config, make_router("instruction", all_params, config, encoders, chat=chat)


@pytest.mark.embed
async def test_a_nonsense_instruction_abstains_with_the_reason(
    encoders: EncoderCache, instructions_file: Path, writer: FakeUpstream
) -> None:
    writer.state.reply = NONSENSE
    config, router = writer_router(writer, instructions_file, encoders)
    await router.setup()
    d = await router.route(QUERY, ctx_of(config))
    assert d.abstained and d.router == "instruction" and not d.candidates
    assert f"instruction {NONSENSE!r} is far from the query" in d.reason
    assert "min_query_similarity 0.4" in d.reason and "writer 'writer'" in d.reason
    assert d.details["instruction"] == NONSENSE and d.details["query_similarity"] < 0.4
    assert writer.state.requests == 1


@pytest.mark.embed
async def test_a_good_instruction_is_routed(
    encoders: EncoderCache, instructions_file: Path, writer: FakeUpstream
) -> None:
    writer.state.reply = GOOD
    config, router = writer_router(writer, instructions_file, encoders)
    await router.setup()
    d = await router.route(QUERY, ctx_of(config))
    assert not d.abstained and d.candidates and f"instruction {GOOD!r}" in d.reason
    assert d.details["query_similarity"] >= 0.4
    # the same nonsense is accepted when the check is switched off: the check decides
    writer.state.reply = NONSENSE
    _, lax = writer_router(writer, instructions_file, encoders, min_query_similarity=-1)
    await lax.setup()
    assert not (await lax.route(QUERY, ctx_of(config))).abstained


@pytest.mark.embed
async def test_a_weak_writer_is_paused(
    encoders: EncoderCache, instructions_file: Path, writer: FakeUpstream
) -> None:
    writer.state.reply = NONSENSE
    config, router = writer_router(
        writer, instructions_file, encoders, quality_window=3, pause_rejected_fraction=0.6
    )
    await router.setup()
    queries = ["Translate good morning into French.", "What is 12 times 7?", "Sort a list."]
    for q in queries:
        assert (await router.route(q, ctx_of(config))).abstained
    assert writer.state.requests == 3
    writer.state.reply = CODE  # the writer is not asked again while paused, even if good now
    paused = await router.route_batch([CODE_QUERY, "hi"], ctx_of(config))
    assert writer.state.requests == 3
    assert all(d.abstained for d in paused)
    assert "instruction writer 'writer' paused: 3 of its last 3 instructions" in paused[0].reason
    router.record.paused_until = 0.0  # the pause is over
    after = await router.route(CODE_QUERY, ctx_of(config))
    assert not after.abstained and writer.state.requests == 4


@pytest.mark.embed
async def test_the_pipeline_falls_to_the_next_router(
    encoders: EncoderCache, instructions_file: Path, writer: FakeUpstream, tmp_path: Path
) -> None:
    writer.state.reply = NONSENSE
    expert = {"model": "m", "endpoints": [writer.base_url]}
    config = CoeConfig.model_validate(
        {
            "experts": [
                {"name": "coder", **expert},
                {"name": "generalist", **expert},
                {"name": "writer", **expert},
            ],
            "default_expert": "generalist",
            "routers": {
                "glider": {
                    "type": "instruction",
                    "params": {
                        "instruction_expert": "writer",
                        "instructions": str(instructions_file),
                    },
                },
                "fallback": {"type": "default"},
            },
            "pipelines": {"glider": {"routers": ["glider", "fallback"]}},
            "default_pipeline": "glider",
            "routers_dirs": [str(REPO / "routers")],
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    async with httpx.AsyncClient(timeout=30) as http:
        engine = await build_engine(
            config, registry, ExpertClient(http), store, tmp_path, encoders=encoders
        )
        d = await engine.decide(Target(pipeline="glider"), QUERY)
        assert d.router == "fallback" and d.chosen == ["generalist"]
        assert f"fell back after glider: instruction {NONSENSE!r} is far from" in d.reason
        [many] = await engine.decide_many(Target(pipeline="glider"), [QUERY])
        assert isinstance(many, type(d)) and many.router == "fallback"
        writer.state.reply = GOOD
        writer.state.reply = CODE
        routed = await engine.decide(Target(pipeline="glider"), CODE_QUERY)
        assert routed.router == "glider" and routed.chosen[0] == "coder"
