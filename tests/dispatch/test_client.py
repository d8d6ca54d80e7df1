"""Dispatch error paths on the fault-injecting upstream: replicas, fallback, limits, streams.

Retry, fallback and concurrency run in process; timeouts and broken streams, which
ASGITransport cannot show, run against real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from coe.dispatch import ExpertClient, complete_ranked, stream_ranked
from coe.errors import AllExpertsFailed, UpstreamError, UpstreamStatus, UpstreamTimeout
from coe.experts.schema import ExpertSpec
from coe.testing import FakeUpstream, Fault
from tests.support.asgi import InProcessUpstream, route_to

BODY = {"model": "x", "messages": [{"role": "user", "content": "hello there"}]}
DEAD = "http://nothing.test"  # no app there: the connection is refused


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


async def collect(first: dict, rest: AsyncIterator[dict]) -> str:
    text = first["choices"][0]["delta"].get("content", "")
    async for chunk in rest:
        if chunk.get("choices"):
            text += chunk["choices"][0]["delta"].get("content", "")
    return text


# -- in process ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fakes() -> list[InProcessUpstream]:
    return [InProcessUpstream(f"u{i}") for i in range(3)]


@pytest.fixture
def ups(fakes: list[InProcessUpstream]) -> list[InProcessUpstream]:
    for f in fakes:
        f.fault = Fault()
        f.state.requests = 0
        f.state.max_inflight = 0
    return fakes


@pytest.fixture
async def client(fakes: list[InProcessUpstream]) -> AsyncIterator[ExpertClient]:
    async with httpx.AsyncClient(transport=route_to(*fakes)) as http:
        yield ExpertClient(http)


async def test_complete_prepares_body(client: ExpertClient, ups: list[InProcessUpstream]) -> None:
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


async def test_5xx_retries_another_replica(
    client: ExpertClient, ups: list[InProcessUpstream]
) -> None:
    ups[0].fault = Fault(mode="status", status=503)
    e = expert("a", ups[0].base_url, ups[1].base_url)
    for _ in range(3):
        out = await client.complete(e, BODY)
        assert out["choices"][0]["message"]["content"].startswith("[u1]")
    # the failed replica cools down: later calls go straight to the healthy one
    assert ups[0].state.requests == 1


async def test_connection_error_retries_replica(
    client: ExpertClient, ups: list[InProcessUpstream]
) -> None:
    e = expert("a", DEAD, ups[1].base_url)
    for _ in range(2):  # replicas take turns: one of the calls tries the dead one first
        out = await client.complete(e, BODY)
        assert out["choices"][0]["message"]["content"].startswith("[u1]")


async def test_all_failed_keeps_every_failure(
    client: ExpertClient, ups: list[InProcessUpstream]
) -> None:
    ups[0].fault = Fault(mode="status", status=500)
    ups[1].fault = Fault(mode="garbage")
    experts = {
        "a": expert("a", ups[0].base_url),
        "b": expert("b", ups[1].base_url),
        "c": expert("c", DEAD),
    }
    with pytest.raises(AllExpertsFailed) as err:
        await complete_ranked(client, ["a", "b", "c"], experts, BODY)
    assert len(err.value.failures) == 3
    assert "answered 500" in err.value.message and "invalid JSON" in err.value.message
    assert err.value.status_code == 502


async def test_client_error_is_not_retried(
    client: ExpertClient, ups: list[InProcessUpstream]
) -> None:
    ups[0].fault = Fault(mode="status", status=400)
    experts = {"a": expert("a", ups[0].base_url), "b": expert("b", ups[2].base_url)}
    with pytest.raises(UpstreamStatus) as err:
        await complete_ranked(client, ["a", "b"], experts, BODY)
    assert err.value.status_code == 400
    assert ups[2].state.requests == 0  # another expert would reject the same request


@pytest.mark.parametrize("stream", [False, True])
async def test_rejected_credentials_skip_the_replicas_but_not_the_next_expert(
    client: ExpertClient, ups: list[InProcessUpstream], stream: bool
) -> None:
    ups[0].fault = Fault(mode="status", status=401)
    ups[1].fault = Fault(mode="status", status=401)
    experts = {
        "a": expert("a", ups[0].base_url, ups[1].base_url),  # both replicas hold the same key
        "b": expert("b", ups[2].base_url),
    }
    if stream:
        answer = await stream_ranked(client, ["a", "b"], experts, BODY)
        await answer.aclose()
    else:
        answer = await complete_ranked(client, ["a", "b"], experts, BODY)
    assert answer.expert == "b"
    assert ups[0].state.requests + ups[1].state.requests == 1
    [failure] = answer.failures
    assert failure.kind == "expert_auth_failed" and failure.status == 502
    assert "rejected the gateway's credentials" in failure.error


async def test_concurrency_limit(client: ExpertClient, ups: list[InProcessUpstream]) -> None:
    ups[0].fault = Fault(mode="ok", delay_s=0.1)
    e = expert("a", ups[0].base_url, limits={"max_concurrency": 2})
    await asyncio.gather(*(client.complete(e, BODY) for _ in range(6)))
    assert ups[0].state.max_inflight == 2


async def test_stream_ok_and_usage_requested(
    client: ExpertClient, ups: list[InProcessUpstream]
) -> None:
    e = expert("a", ups[0].base_url)
    first, rest = await client.open_stream(e, BODY)
    assert (await collect(first, rest)).strip() == "[u0] hello there"
    assert ups[0].state.bodies[-1]["stream_options"] == {"include_usage": True}


async def test_stream_falls_back_before_first_token(
    client: ExpertClient, ups: list[InProcessUpstream]
) -> None:
    ups[0].fault = Fault(mode="cut", cut_after=0)  # the body ends with no event at all
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


# -- against real servers: timeouts and broken streams ---------------------------------------
@pytest.fixture(scope="module")
def servers() -> Iterator[list[FakeUpstream]]:
    started = [FakeUpstream(f"u{i}").start() for i in range(2)]
    yield started
    for s in started:
        s.stop()


@pytest.fixture
def real(servers: list[FakeUpstream]) -> list[FakeUpstream]:
    for s in servers:
        s.fault = Fault()
    return servers


@pytest.fixture
async def real_client() -> AsyncIterator[ExpertClient]:
    async with httpx.AsyncClient() as http:
        yield ExpertClient(http)


async def test_timeout_then_fallback_to_next_expert(
    real_client: ExpertClient, real: list[FakeUpstream]
) -> None:
    real[0].fault = Fault(mode="hang")
    experts = {
        "slow": expert("slow", real[0].base_url, timeout_s=0.3),
        "b": expert("b", real[1].base_url),
    }
    with pytest.raises(UpstreamTimeout):
        await real_client.complete(experts["slow"], BODY)
    answer = await complete_ranked(real_client, ["slow", "b"], experts, BODY)
    assert answer.expert == "b"
    assert [f.expert for f in answer.failures] == ["slow"]
    assert answer.failures[0].status == 504


async def test_stream_cut_after_first_token_raises(
    real_client: ExpertClient, real: list[FakeUpstream]
) -> None:
    real[0].fault = Fault(mode="cut", cut_after=2)
    first, rest = await real_client.open_stream(expert("a", real[0].base_url), BODY)
    with pytest.raises(UpstreamError, match="before \\[DONE\\]"):
        await collect(first, rest)


async def test_stream_stall_times_out(real_client: ExpertClient, real: list[FakeUpstream]) -> None:
    real[0].fault = Fault(mode="stall", cut_after=1)
    first, rest = await real_client.open_stream(expert("a", real[0].base_url, timeout_s=0.3), BODY)
    with pytest.raises(UpstreamTimeout):
        await collect(first, rest)
