"""Per-expert state stays bounded while experts come and go; state in use is never dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from coe.dispatch import ExpertClient
from coe.dispatch.expert_state import ExpertStates
from coe.errors import UpstreamTimeout
from coe.experts.schema import ExpertSpec
from coe.testing import Fault
from tests.support.asgi import InProcessUpstream, route_to

BODY = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}


def expert(name: str, url: str, **limits: float) -> ExpertSpec:
    return ExpertSpec.model_validate(
        {"name": name, "model": "m", "endpoints": [url], "limits": {"timeout_s": 5, **limits}}
    )


@pytest.fixture
def upstream() -> InProcessUpstream:
    return InProcessUpstream("st")


@pytest.fixture
async def client(upstream: InProcessUpstream) -> AsyncIterator[ExpertClient]:
    async with httpx.AsyncClient(transport=route_to(upstream)) as http:
        client = ExpertClient(http)
        client.states.max_experts = 8
        yield client


async def test_experts_registered_and_removed_over_time_leave_bounded_state(
    client: ExpertClient,
) -> None:
    # 200 experts, each called once and then never again (removed from the registry)
    for i in range(200):
        out = await client.complete(expert(f"e{i}", "http://st.test"), BODY)
        assert out["choices"]
    assert len(client.states) == 8
    assert "e199" in client.states and "e0" not in client.states  # the oldest went first


async def test_retain_forgets_experts_no_longer_registered(client: ExpertClient) -> None:
    for i in range(5):
        await client.complete(expert(f"e{i}", "http://st.test"), BODY)
    client.retain(["e1", "e3"])
    assert len(client.states) == 2 and "e1" in client.states and "e3" in client.states


async def test_an_expert_with_calls_in_flight_keeps_its_limit(
    client: ExpertClient, upstream: InProcessUpstream
) -> None:
    upstream.fault = Fault(mode="ok", delay_s=5)
    busy = expert("busy", "http://st.test", max_concurrency=1, timeout_s=30)
    call = asyncio.create_task(client.complete(busy, BODY))
    while upstream.state.inflight == 0:  # noqa: ASYNC110 (the fake has no event to wait on)
        await asyncio.sleep(0.01)
    upstream.fault = Fault()
    for i in range(20):  # enough new experts to push "busy" out if it were idle
        await client.complete(expert(f"n{i}", "http://st.test"), BODY)
    client.retain([])
    assert "busy" in client.states
    # its semaphore is the same one: a second call waits for the first, up to its timeout
    impatient = expert("busy", "http://st.test", max_concurrency=1, timeout_s=0.05)
    with pytest.raises(UpstreamTimeout, match="concurrency limit"):
        await client.complete(impatient, BODY)
    await call
    client.retain([])
    assert len(client.states) == 0


def test_a_changed_spec_replaces_the_state_and_keeps_replica_health() -> None:
    states = ExpertStates(max_experts=4)
    first = states.of(expert("a", "http://x.test"))
    states.of(expert("a", "http://x.test")).replicas.failed(first.replicas.replicas[0])
    again = states.of(expert("a", "http://x.test", max_concurrency=2))
    assert again is not first and again.replicas is first.replicas
    moved = states.of(expert("a", "http://y.test"))
    assert moved.replicas is not first.replicas and len(states) == 1
