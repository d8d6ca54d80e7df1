"""Dispatch error paths on the fault-injecting server: replicas, timeouts, fallback, streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from coe.dispatch import ExpertClient, complete_ranked, stream_ranked
from coe.errors import AllExpertsFailed, UpstreamError, UpstreamStatus, UpstreamTimeout
from coe.experts.schema import ExpertSpec
from coe.testing import FakeUpstream, Fault

BODY = {"model": "x", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture(scope="module")
def ups() -> Iterator[list[FakeUpstream]]:
    servers = [FakeUpstream(f"u{i}").start() for i in range(3)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(autouse=True)
def reset(ups: list[FakeUpstream]) -> None:
    for s in ups:
        s.fault = Fault()
        s.state.requests = 0
        s.state.max_inflight = 0


@pytest.fixture
async def client() -> AsyncIterator[ExpertClient]:
    async with httpx.AsyncClient() as http:
        yield ExpertClient(http)


def expert(name: str, *urls: str, timeout_s: float = 5, **kw: object) -> ExpertSpec:
    return ExpertSpec.model_validate(
        {
            "name": name,
            "model": f"{name}-model",
            "endpoints": list(urls),
            "limits": {"timeout_s": timeout_s, **kw.pop("limits", {})},
            **kw,  # type: ignore[dict-item]
        }
    )


def dead_url() -> str:
    return "http://127.0.0.1:9"  # discard port: nothing listens


async def test_complete_prepares_body(client: ExpertClient, ups: list[FakeUpstream]) -> None:
    e = expert(
        "a",
        ups[0].base_url,
        system_prompt="Be brief.",
        limits={"max_tokens": 7},
        defaults={"temperature": 0.1, "top_k": 9},
    )
    out = await client.complete(e, {**BODY, "max_tokens": 100, "top_k": 3})
    assert out["choices"][0]["message"]["content"] == "[u0] hello there"
    sent = ups[0].state.bodies[-1]
    assert sent["model"] == "a-model"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 7
    assert sent["top_k"] == 3  # unknown fields pass through, and beat the expert's defaults
    assert sent["temperature"] == 0.1  # a default the client did not set
    assert sent["stream"] is False


async def test_5xx_retries_another_replica(client: ExpertClient, ups: list[FakeUpstream]) -> None:
    ups[0].fault = Fault(mode="status", status=503)
    e = expert("a", ups[0].base_url, ups[1].base_url)
    for _ in range(3):
        out = await client.complete(e, BODY)
        assert out["choices"][0]["message"]["content"].startswith("[u1]")
    # the failed replica cools down: later calls go straight to the healthy one
    assert ups[0].state.requests == 1


async def test_connection_error_retries_replica(
    client: ExpertClient, ups: list[FakeUpstream]
) -> None:
    e = expert("a", dead_url(), ups[1].base_url)
    out = await client.complete(e, BODY)
    assert out["choices"][0]["message"]["content"].startswith("[u1]")


async def test_timeout_then_fallback_to_next_expert(
    client: ExpertClient, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="hang")
    experts = {
        "slow": expert("slow", ups[0].base_url, timeout_s=0.3),
        "b": expert("b", ups[1].base_url),
    }
    with pytest.raises(UpstreamTimeout):
        await client.complete(experts["slow"], BODY)
    answer = await complete_ranked(client, ["slow", "b"], experts, BODY)
    assert answer.expert == "b"
    assert [f.expert for f in answer.failures] == ["slow"]
    assert answer.failures[0].status == 504


async def test_all_failed_keeps_every_failure(
    client: ExpertClient, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="status", status=500)
    ups[1].fault = Fault(mode="garbage")
    experts = {
        "a": expert("a", ups[0].base_url),
        "b": expert("b", ups[1].base_url),
        "c": expert("c", dead_url()),
    }
    with pytest.raises(AllExpertsFailed) as err:
        await complete_ranked(client, ["a", "b", "c"], experts, BODY)
    assert len(err.value.failures) == 3
    assert "answered 500" in err.value.message and "invalid JSON" in err.value.message
    assert err.value.status_code == 502


async def test_client_error_is_not_retried(client: ExpertClient, ups: list[FakeUpstream]) -> None:
    ups[0].fault = Fault(mode="status", status=400)
    experts = {"a": expert("a", ups[0].base_url), "b": expert("b", ups[2].base_url)}
    with pytest.raises(UpstreamStatus) as err:
        await complete_ranked(client, ["a", "b"], experts, BODY)
    assert err.value.status_code == 400
    assert ups[2].state.requests == 0  # another expert would reject the same request


async def test_concurrency_limit(client: ExpertClient, ups: list[FakeUpstream]) -> None:
    ups[0].fault = Fault(mode="ok", delay_s=0.1)
    e = expert("a", ups[0].base_url, limits={"max_concurrency": 2})
    already = ups[0].state.inflight  # requests earlier tests left hanging
    ups[0].state.max_inflight = already
    await asyncio.gather(*(client.complete(e, BODY) for _ in range(6)))
    assert ups[0].state.max_inflight - already == 2


async def collect(first: dict, rest: AsyncIterator[dict]) -> str:
    text = first["choices"][0]["delta"].get("content", "")
    async for chunk in rest:
        if chunk.get("choices"):
            text += chunk["choices"][0]["delta"].get("content", "")
    return text


async def test_stream_ok_and_usage_requested(client: ExpertClient, ups: list[FakeUpstream]) -> None:
    e = expert("a", ups[0].base_url)
    first, rest = await client.open_stream(e, BODY)
    assert (await collect(first, rest)).strip() == "[u0] hello there"
    assert ups[0].state.bodies[-1]["stream_options"] == {"include_usage": True}


async def test_stream_falls_back_before_first_token(
    client: ExpertClient, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="cut", cut_after=0)
    ups[1].fault = Fault(mode="status", status=502)
    experts = {
        "a": expert("a", ups[0].base_url),
        "b": expert("b", ups[1].base_url),
        "c": expert("c", ups[2].base_url),
    }
    opened = await stream_ranked(client, ["a", "b", "c"], experts, BODY)
    assert opened.expert == "c"
    assert [f.expert for f in opened.failures] == ["a", "b"]
    assert (await collect(opened.first, opened.rest)).strip() == "[u2] hello there"


async def test_stream_cut_after_first_token_raises(
    client: ExpertClient, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="cut", cut_after=2)
    first, rest = await client.open_stream(expert("a", ups[0].base_url), BODY)
    with pytest.raises(UpstreamError, match="before \\[DONE\\]"):
        await collect(first, rest)


async def test_stream_stall_times_out(client: ExpertClient, ups: list[FakeUpstream]) -> None:
    ups[0].fault = Fault(mode="stall", cut_after=1)
    first, rest = await client.open_stream(expert("a", ups[0].base_url, timeout_s=0.3), BODY)
    with pytest.raises(UpstreamTimeout):
        await collect(first, rest)
