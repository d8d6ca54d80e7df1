"""End to end: the official openai client, our gateway, a real vLLM CPU expert."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from tests.support.server import ServedApp

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gateway(vllm_expert) -> Iterator[str]:  # type: ignore[no-untyped-def]
    config = CoeConfig.model_validate(
        {
            "experts": [
                {
                    "name": "generalist",
                    "model": vllm_expert.model,
                    "endpoints": [vllm_expert.base_url],
                    "limits": {"max_tokens": 16},
                },
                {
                    "name": "pirate",
                    "model": vllm_expert.model,
                    "endpoints": [vllm_expert.base_url],
                    "system_prompt": "You are a pirate captain who sails the seven seas. Answer "
                    "every "
                    "question in the voice of an old pirate, with plenty of arrr, "
                    "matey and talk of treasure, ships, parrots and rum.",
                    "limits": {"max_tokens": 16},
                },
                # a replica that is down: dispatch must skip it and use the live one
                {
                    "name": "flaky",
                    "model": vllm_expert.model,
                    "endpoints": ["http://127.0.0.1:9", vllm_expert.base_url],
                    "limits": {"max_tokens": 16},
                },
            ],
            "default_expert": "generalist",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )
    server = ServedApp(create_app(Settings(dev_mode=True), config)).start()
    yield server.base_url
    server.stop()


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_through_gateway(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="coe/auto",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    out = raw.parse()
    assert raw.headers["x-coe-expert"] == "generalist"
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.usage is not None and 0 < out.usage.completion_tokens <= 16
    assert out.model == "generalist"


def test_stream_through_gateway(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="coe/auto",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len(chunks) > 3  # really streamed, token by token
    assert chunks[0].model_extra is not None
    assert chunks[0].model_extra["coe"]["expert"] == "generalist"


def test_expert_system_prompt_and_dead_replica(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="generalist",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    pirate = client.chat.completions.create(
        model="pirate",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    # the expert's system prompt reached the model: it is counted in the prompt tokens
    assert plain.usage is not None and pirate.usage is not None
    assert pirate.usage.prompt_tokens > plain.usage.prompt_tokens + 5
    flaky = client.chat.completions.create(
        model="flaky",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    assert flaky.choices[0].message.content == plain.choices[0].message.content


def test_models_include_experts(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"coe/auto", "generalist", "pirate", "flaky"} <= ids
