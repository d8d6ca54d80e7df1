"""Aggregation with real vLLM CPU experts: one small model, three system prompts, an aggregator.

Greedy decoding makes the answers repeatable; every call is capped at a few tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.aggregation.conftest import fixed

pytestmark = pytest.mark.vllm
SCORES = {"generalist": 0.6, "tutor": 0.3, "terse": 0.1}
PROMPTS = {
    "generalist": None,
    "tutor": "You are a careful math tutor. Solve the problem step by step and state the final "
    "answer.",
    "terse": "You are a concise assistant. Answer with just the final answer, nothing else.",
    "agg": None,
}
ARITHMETIC = [{"role": "user", "content": "What is 2+2? Answer with a number."}]
OPEN = [{"role": "user", "content": "Name one thing people like to eat for breakfast."}]


@pytest.fixture(scope="module")
def gateway(serve: Any, vllm_expert: Any) -> str:
    def expert(name: str, prompt: str | None) -> dict[str, Any]:
        spec = {
            "name": name,
            "model": vllm_expert.model,
            "endpoints": [vllm_expert.base_url],
            "limits": {"max_tokens": 24, "timeout_s": 60},
        }
        return {**spec, "system_prompt": prompt} if prompt else spec

    aggregation = {"aggregator": "agg", "deadline_s": 60}
    url: str = serve(
        {
            "experts": [expert(name, prompt) for name, prompt in PROMPTS.items()],
            "default_expert": "generalist",
            "routers": {"three": fixed(SCORES, k=3)},
            "pipelines": {
                "auto": {"routers": ["three"]},
                "synth": {
                    "routers": ["three"],
                    "aggregation": {**aggregation, "skip_if_agree": False},
                },
                "agree": {"routers": ["three"], "aggregation": aggregation},
                "vote": {"routers": ["three"], "aggregation": {**aggregation, "strategy": "vote"}},
            },
        }
    )
    return url


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        yield client


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(http: httpx.Client, pipeline: str, messages: list[dict[str, str]]) -> httpx.Response:
    body = {"model": f"coe/{pipeline}", "messages": messages, "max_tokens": 24, "temperature": 0}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


def test_synthesize_with_a_real_aggregator(http: httpx.Client) -> None:
    r = ask(http, "synth", OPEN)
    body = r.json()
    coe = body["coe"]
    assert [a["expert"] for a in coe["answers"]] == ["generalist", "tutor", "terse"]
    assert all(a["status"] == "ok" and a["answer"] for a in coe["answers"])
    assert coe["aggregation"] == {
        "strategy": "synthesize",
        "aggregator": "agg",
        "skipped": None,
        "note": None,
        "deadline_s": 60.0,
        "aggregator_usage": coe["aggregation"]["aggregator_usage"],
    }
    assert r.headers["x-coe-expert"] == "generalist,tutor,terse"
    assert r.headers["x-coe-aggregator"] == "agg" and body["model"] == "agg"
    assert body["choices"][0]["message"]["content"].strip()
    calls = [a["usage"] for a in coe["answers"]] + [coe["aggregation"]["aggregator_usage"]]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert body["usage"][key] == sum(c[key] for c in calls) > 0
    # The aggregator read all three answers: its prompt is longer than any expert's.
    assert calls[-1]["prompt_tokens"] > max(c["prompt_tokens"] for c in calls[:-1]) + 30


def test_vote_over_real_answers(http: httpx.Client) -> None:
    coe = ask(http, "vote", ARITHMETIC).json()["coe"]
    vote = coe["aggregation"]["vote"]
    assert vote["value"] == "4" and vote["counts"] == {"4": 3} and vote["winner"] == "generalist"


def test_real_experts_that_agree_skip_the_aggregator(http: httpx.Client) -> None:
    r = ask(http, "agree", ARITHMETIC)
    coe = r.json()["coe"]
    assert coe["aggregation"]["skipped"] == "all experts agree"
    assert coe["aggregation"]["aggregator"] is None and "x-coe-aggregator" not in r.headers
    assert r.json()["model"] == "generalist" and "4" in r.json()["choices"][0]["message"]["content"]


def test_stream_a_real_synthesis_through_the_openai_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(  # type: ignore[call-overload]
        model="coe/synth",
        messages=OPEN,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    coe = (chunks[0].model_extra or {})["coe"]
    assert coe["experts"] == ["generalist", "tutor", "terse"]
    assert coe["aggregation"]["aggregator"] == "agg" and chunks[0].model == "agg"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens > coe["usage"]["total_tokens"] > 0
