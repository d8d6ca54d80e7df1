"""GLIDER instruction router: expert instructions, the real instruction LLM, the store cache,
and dynamic k over its probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coe.routing.dynamic_k import dynamic_k
from coe.routing.encoders import EncoderCache, text_hash
from coe.store import keys
from coe.store.redis_store import RedisStore

from .conftest import CountingChat, HttpChat, ctx_of, make_config, make_router

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
    encoders: EncoderCache, instructions_file: Path, vllm_expert, redis_store: RedisStore
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
    assert await redis_store.get(keys.instruction_cache(text_hash(f"writer\n{query}"))) == written
    second = await router.route(query, ctx_of(config))
    assert len(chat.calls) == 1  # the repeated query cost no LLM call
    assert second.details["instruction"] == written and second.chosen == first.chosen
    other = await router.route("Reverse a string in Python.", ctx_of(config))
    assert len(chat.calls) == 2 and other.details["instruction"] != written
