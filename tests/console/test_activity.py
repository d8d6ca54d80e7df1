"""The console's activity record on both stores: the routing mix per window, the last requests
capped, every key with a TTL, and recording that never fails or blocks a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from coe.errors import StoreUnavailable, UpstreamError
from coe.experts.schema import AggregationSpec
from coe.observability.activity import Activity, RequestRecord
from coe.pipeline import Plan, Target
from coe.routing import Candidate, RouteDecision
from coe.store import keys
from coe.store.base import Store
from coe.store.embedded import EmbeddedStore
from coe.store.redis_store import RedisStore

NOW = 1_800_000_000.0  # a fixed clock: minute boundaries are the test's, not the machine's


def record(**changes: Any) -> RequestRecord:
    base = RequestRecord(
        at=NOW,
        request_id="req-1",
        model="coe/auto",
        pipeline="auto",
        router="mention",
        reason="the query names alpha",
        category=None,
        candidates=[{"expert": "alpha", "score": 0.9}, {"expert": "beta", "score": 0.1}],
        k=1,
        aggregation=None,
        expert="alpha",
        status=200,
        latency_ms=12.5,
        stream=False,
    )
    return replace(base, **changes)


@pytest.fixture
async def writing(store: Store) -> AsyncIterator[Activity]:
    """An Activity over `store` with its writer running, as in a gateway."""
    activity = Activity(store, recent_max=5, clock=lambda: NOW)
    stop = asyncio.Event()
    task = asyncio.create_task(activity.run(stop))
    yield activity
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_mix_counts_each_window(writing: Activity) -> None:
    for _ in range(3):
        writing.record(record())
    writing.record(record(at=NOW - 10 * 60))  # in the hour, not in the last 5 minutes
    writing.record(record(at=NOW - 2 * 3600))  # outside both windows
    writing.record(record(router="default", candidates=[{"expert": "beta", "score": 1.0}]))
    await writing.flush()

    mix = await writing.mix()

    rows = {(r["pipeline"], r["router"], r["expert"]): r for r in mix["rows"]}
    assert rows[("auto", "mention", "alpha")]["last_5m"] == 3
    assert rows[("auto", "mention", "alpha")]["last_60m"] == 4
    assert rows[("auto", "default", "beta")]["last_60m"] == 1
    assert mix["totals"] == {"last_5m": 4, "last_60m": 5}
    assert len(mix["per_minute"]) == 60
    assert mix["per_minute"][-1] == 4 and mix["per_minute"][-11] == 1


async def test_a_fan_out_counts_its_chosen_experts_together(writing: Activity) -> None:
    writing.record(record(k=2, aggregation="synthesize", expert="alpha,beta"))
    await writing.flush()
    assert [r["expert"] for r in (await writing.mix())["rows"]] == ["alpha+beta"]


async def test_names_with_separators_survive_the_key(writing: Activity) -> None:
    writing.record(record(pipeline="a|b:c", router="r%1"))
    await writing.flush()
    (row,) = (await writing.mix())["rows"]
    assert (row["pipeline"], row["router"]) == ("a|b:c", "r%1")


async def test_recent_requests_are_the_newest_and_capped(writing: Activity, store: Store) -> None:
    for i in range(8):
        writing.record(record(request_id=f"req-{i}", at=NOW + i))
    await writing.flush()

    recent = await writing.recent()

    assert [r["request_id"] for r in recent] == [f"req-{i}" for i in range(7, 2, -1)]
    assert recent[0]["candidates"][0] == {"expert": "alpha", "score": 0.9}
    assert recent[0]["expert"] == "alpha" and recent[0]["status"] == 200
    stored = [k for k in await store.keys("activity:request:")]
    assert len(stored) == 5  # the older ones are deleted, not only hidden
    assert [r["request_id"] for r in await writing.recent(limit=2)] == ["req-7", "req-6"]


async def test_nothing_recorded_reads_empty(store: Store) -> None:
    activity = Activity(store, clock=lambda: NOW)
    assert await activity.recent() == []
    assert (await activity.mix())["rows"] == []


@pytest.mark.redis
async def test_every_key_expires(redis_store: RedisStore) -> None:
    activity = Activity(redis_store, recent_max=2)
    for i in range(4):
        await activity.write([record(request_id=f"req-{i}")])
    found = [k async for k in redis_store.client.scan_iter(match=redis_store.prefix + "*")]
    assert len(found) == 1 + 1 + 2  # one mix counter, the sequence, two requests
    for key in found:
        assert await redis_store.client.pttl(key) > 0, key
        assert not keys.is_persistent(key.removeprefix(redis_store.prefix))


async def test_a_full_queue_drops_without_blocking_or_raising(caplog: Any) -> None:
    activity = Activity(EmbeddedStore(), queue_max=2)  # no writer running: nothing drains
    with caplog.at_level(logging.WARNING, logger="coe.observability.activity"):
        for i in range(5):
            activity.record(record(request_id=f"req-{i}"))
    assert activity.dropped == 3
    assert "activity queue full" in caplog.text


class DownStore(EmbeddedStore):
    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        raise StoreUnavailable("Redis is unavailable: connection refused")


async def test_a_store_that_is_down_is_logged_and_the_writer_goes_on(caplog: Any) -> None:
    activity = Activity(DownStore())
    stop = asyncio.Event()
    task = asyncio.create_task(activity.run(stop))
    try:
        with caplog.at_level(logging.WARNING, logger="coe.observability.activity"):
            activity.record(record())
            activity.record(record())
            await activity.flush()
        assert activity.failed == 2
        assert "could not store request activity" in caplog.text
        assert not task.done()
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def plan(k: int = 1) -> Plan:
    decision = RouteDecision(
        candidates=(Candidate("alpha", 0.8), Candidate("beta", 0.2)),
        router="mention",
        reason="the query names alpha",
        k=k,
    )
    return Plan(Target(pipeline="auto"), decision, AggregationSpec(strategy="vote"), route_ms=3.0)


class Answered:
    experts = ("beta",)  # what answered after alpha failed over


async def test_a_watch_records_the_answer_and_passes_it_on() -> None:
    activity = Activity(EmbeddedStore(), clock=lambda: NOW)

    async def answer() -> Answered:
        return Answered()

    result = await activity.watch(plan(), "req-9", "coe/auto").answer(answer())

    assert isinstance(result, Answered)
    queued = activity._queue.get_nowait()
    assert (queued.request_id, queued.expert, queued.status) == ("req-9", "beta", 200)
    assert queued.latency_ms >= 3.0  # routing time counts
    assert queued.aggregation is None and queued.pipeline == "auto"


async def test_a_watch_records_a_failure_and_raises_it_unchanged() -> None:
    activity = Activity(EmbeddedStore(), clock=lambda: NOW)

    async def fail() -> None:
        raise UpstreamError("every expert failed", code="all_failed")

    with pytest.raises(UpstreamError, match="every expert failed"):
        await activity.watch(plan(k=2), "req-10", "coe/auto", stream=True).answer(fail())

    queued = activity._queue.get_nowait()
    assert queued.expert is None and queued.status == UpstreamError.status_code
    assert queued.error == "every expert failed"
    assert queued.k == 2 and queued.aggregation == "vote" and queued.stream
