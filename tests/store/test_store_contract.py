"""One contract, two stores: the embedded store and real Redis must behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.store.base import Store
from coe.store.embedded import EmbeddedStore
from tests.support.redis import isolated_redis_store

REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "embedded":
        s = EmbeddedStore(prefix="t:")
        yield s
        await s.close()
    else:
        async with isolated_redis_store(REDIS_URL) as redis:
            yield redis


async def test_strings_ttl_and_delete(store: Store) -> None:
    assert await store.get("missing") is None
    await store.set("k", "v")
    assert await store.get("k") == "v"
    await store.set("short", "x", ttl_s=0.15)
    assert await store.get("short") == "x"
    await asyncio.sleep(0.3)
    assert await store.get("short") is None
    assert await store.delete("k", "nothing") == 1
    assert await store.get("k") is None


async def test_counters(store: Store) -> None:
    assert await store.incr("c") == 1
    assert await store.incr("c", 5) == 6
    assert await store.incr("w", ttl_s=0.15) == 1
    assert await store.incr("w", ttl_s=10) == 2  # ttl is set on creation only
    await asyncio.sleep(0.3)
    assert await store.incr("w") == 1


async def test_hashes_and_keys(store: Store) -> None:
    await store.hset("h", {"a": "1", "b": "2"})
    await store.hset("h", {"b": "3"})
    assert await store.hget("h", "b") == "3"
    assert await store.hget("h", "zz") is None
    assert await store.hgetall("h") == {"a": "1", "b": "3"}
    assert await store.hdel("h", "a", "zz") == 1
    assert await store.hgetall("h") == {"b": "3"}
    assert await store.hgetall("none") == {}
    await store.set("p:1", "x")
    await store.set("p:2", "y")
    assert await store.keys("p:") == ["p:1", "p:2"]


async def test_publish_subscribe(store: Store) -> None:
    received: list[str] = []
    sub = store.subscribe("chan")

    async def listen() -> None:
        async for msg in sub:
            received.append(msg)
            if msg == "second":
                return

    task = asyncio.create_task(listen())
    for _ in range(50):  # the subscription must be live before publishing
        await asyncio.sleep(0.02)
        await store.publish("chan", "ping")
        if received:
            break
    await store.publish("chan", "second")
    await asyncio.wait_for(task, 5)
    assert received[-1] == "second"
    with contextlib.suppress(Exception):
        await sub.aclose()  # type: ignore[attr-defined]


async def test_registry_seed_update_remove(store: Store) -> None:
    config = CoeConfig.model_validate(
        {
            "experts": [
                {"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:9"]},
                {"name": "b", "model": "m", "endpoints": ["http://127.0.0.1:9"]},
            ],
            "default_expert": "a",
        }
    )
    reg = ExpertRegistry(store)
    await reg.seed(config)
    assert list(reg.snapshot()) == ["a", "b"]
    first_version = reg.version
    await reg.upsert(ExpertSpec(name="c", model="m2", endpoints=["http://127.0.0.1:11"]))
    assert reg.version == first_version + 1
    assert reg.get("c").model == "m2"
    # A second replica sharing the store sees the change on refresh, and a re-seed does not
    # overwrite what an operator changed at run time.
    other = ExpertRegistry(store)
    await other.seed(config)
    assert set(other.snapshot()) == {"a", "b", "c"}
    await reg.remove("b")
    assert await other.refresh() is True
    assert set(other.snapshot()) == {"a", "c"}
    assert await other.refresh() is False


async def test_conditional_writes(store: Store) -> None:
    assert await store.set_if_absent("once", "a") is True
    assert await store.set_if_absent("once", "b") is False
    assert await store.get("once") == "a"
    assert await store.hsetnx("h", "f", "1") is True
    assert await store.hsetnx("h", "f", "2") is False
    assert await store.hget("h", "f") == "1"
    assert await store.hlen("h") == 1 and await store.hlen("nothing") == 0
    assert await store.hmget("h", ["f", "g"]) == ["1", None]
    assert await store.hmget("nothing", ["f"]) == [None]


async def test_streams_deliver_ack_and_reclaim(store: Store) -> None:
    await store.xgroup_create("jobs", "workers")
    await store.xgroup_create("jobs", "workers")  # idempotent
    ids = [await store.xadd("jobs", {"n": str(i)}) for i in range(3)]
    first = await store.xreadgroup("jobs", "workers", "w1", count=2, block_ms=10)
    assert [f["n"] for _, f in first] == ["0", "1"]
    second = await store.xreadgroup("jobs", "workers", "w2", count=5, block_ms=10)
    assert [f["n"] for _, f in second] == ["2"]
    assert await store.xreadgroup("jobs", "workers", "w2", count=5, block_ms=10) == []
    assert await store.xack("jobs", "workers", ids[0]) == 1
    # w1 "dies" holding entry 1: after the idle time another worker takes it over, once
    assert await store.xautoclaim("jobs", "workers", "w3", min_idle_ms=60_000) == []
    await asyncio.sleep(0.15)
    claimed = await store.xautoclaim("jobs", "workers", "w3", min_idle_ms=100, count=10)
    assert sorted(f["n"] for _, f in claimed) == ["1", "2"]
    assert await store.xack("jobs", "workers", *(i for i, _ in claimed)) == 2
    await asyncio.sleep(0.15)
    assert await store.xautoclaim("jobs", "workers", "w3", min_idle_ms=100) == []


async def test_blocking_read_wakes_on_add(store: Store) -> None:
    await store.xgroup_create("wake", "g")

    async def add_later() -> None:
        await asyncio.sleep(0.1)
        await store.xadd("wake", {"x": "1"})

    task = asyncio.create_task(add_later())
    got = await store.xreadgroup("wake", "g", "c", count=1, block_ms=3000)
    await task
    assert [f for _, f in got] == [{"x": "1"}]


async def test_expire(store: Store) -> None:
    assert await store.expire("absent", 10) is False
    await store.set("s", "v")
    await store.hset("h", {"f": "1"})
    assert await store.expire("s", 0.15) is True
    assert await store.expire("h", 0.15) is True
    await store.set("kept", "v")
    await asyncio.sleep(0.3)
    assert await store.get("s") is None
    assert await store.hgetall("h") == {}
    assert await store.get("kept") == "v"


async def test_stream_deliveries_and_extend(store: Store) -> None:
    await store.xgroup_create("jobs", "workers")
    entry = await store.xadd("jobs", {"n": "0"})
    assert await store.xdeliveries("jobs", "workers", entry) == 0  # not delivered yet
    await store.xreadgroup("jobs", "workers", "w1", count=1, block_ms=10)
    assert await store.xdeliveries("jobs", "workers", entry) == 1
    # the owner keeps its entry from going idle; extending counts no delivery
    await asyncio.sleep(0.15)
    assert await store.xextend("jobs", "workers", "w1", entry) is True
    assert await store.xautoclaim("jobs", "workers", "w2", min_idle_ms=100) == []
    assert await store.xdeliveries("jobs", "workers", entry) == 1
    # once idle, another consumer takes it: a second delivery, and the first owner lost it
    await asyncio.sleep(0.15)
    assert [f for _, f in await store.xautoclaim("jobs", "workers", "w2", min_idle_ms=100)] == [
        {"n": "0"}
    ]
    assert await store.xdeliveries("jobs", "workers", entry) == 2
    assert await store.xextend("jobs", "workers", "w1", entry) is False
    assert await store.xextend("jobs", "workers", "w2", entry) is True
    await store.xack("jobs", "workers", entry)
    assert await store.xdeliveries("jobs", "workers", entry) == 0
    assert await store.xextend("jobs", "workers", "w2", entry) is False


async def test_stream_backlog_and_depth(store: Store) -> None:
    assert await store.xbacklog("none", "workers") == []
    assert await store.xdepth("none", "workers") == (0, 0)
    await store.xgroup_create("jobs", "workers")
    ids = [await store.xadd("jobs", {"n": str(i)}) for i in range(4)]
    assert await store.xdepth("jobs", "workers") == (4, 0)
    await store.xreadgroup("jobs", "workers", "w1", count=2, block_ms=10)
    await store.xack("jobs", "workers", ids[0])
    # waiting first (2, 3), then pending (1); the acknowledged entry is gone
    assert [f["n"] for _, f in await store.xbacklog("jobs", "workers")] == ["2", "3", "1"]
    assert await store.xdepth("jobs", "workers") == (2, 1)


async def test_deleted_entries_leave_the_stream_and_delivery_goes_on(store: Store) -> None:
    """Acknowledged work is deleted, so a stream holds only open work; deleting in any order
    neither loses nor repeats the entries still to deliver."""
    await store.xgroup_create("work", "g")
    ids = [await store.xadd("work", {"n": str(i)}) for i in range(4)]
    got = await store.xreadgroup("work", "g", "w", count=2, block_ms=10)
    assert [f["n"] for _, f in got] == ["0", "1"]
    await store.xack("work", "g", ids[1])
    assert await store.xdel("work", ids[1]) == 1  # not the oldest: kept until the front goes
    assert await store.xlen("work") == 3
    await store.xack("work", "g", ids[0])
    assert await store.xdel("work", ids[0], "0-999") == 1  # an unknown id deletes nothing
    assert await store.xlen("work") == 2
    rest = await store.xreadgroup("work", "g", "w", count=5, block_ms=10)
    assert [f["n"] for _, f in rest] == ["2", "3"]
    assert await store.xdepth("work", "g") == (0, 2)
    await store.xack("work", "g", ids[2], ids[3])
    await store.xdel("work", ids[3], ids[2])
    assert await store.xlen("work") == 0 and await store.xdepth("work", "g") == (0, 0)
    new = await store.xadd("work", {"n": "4"})
    assert [i for i, _ in await store.xreadgroup("work", "g", "w", count=5, block_ms=10)] == [new]


async def test_trim_drops_only_acknowledged_entries(store: Store) -> None:
    """The safety net under XDEL: acknowledged entries a crash left behind are trimmed;
    pending and undelivered ones never are."""
    assert await store.xtrim_acknowledged("none", "g") == 0
    await store.xgroup_create("work", "g")
    ids = [await store.xadd("work", {"n": str(i)}) for i in range(5)]
    assert await store.xtrim_acknowledged("work", "g") == 0  # nothing delivered yet
    await store.xreadgroup("work", "g", "w", count=3, block_ms=10)
    await store.xack("work", "g", ids[0], ids[1])  # acknowledged, never deleted
    assert await store.xtrim_acknowledged("work", "g") == 2
    assert await store.xlen("work") == 3
    assert [f["n"] for _, f in await store.xbacklog("work", "g")] == ["3", "4", "2"]
    await store.xack("work", "g", ids[2])
    assert await store.xtrim_acknowledged("work", "g") == 1
    assert await store.xdepth("work", "g") == (2, 0)
    rest = await store.xreadgroup("work", "g", "w", count=5, block_ms=10)
    assert [f["n"] for _, f in rest] == ["3", "4"]
    assert await store.xtrim_acknowledged("work", "g") == 0  # both pending


async def test_embedded_store_expires_keys_nobody_reads_again() -> None:
    """Caches and rate windows written once and never read must not pile up: a periodic
    sweep removes them, a bounded number per tick."""
    store = EmbeddedStore(prefix="t:", sweep_every_s=0.05, sweep_max=25)
    try:
        for i in range(60):
            await store.set(f"cache:{i}", "x", ttl_s=0.05)
            await store.incr(f"ratelimit:k:{i}", ttl_s=0.05)
        await store.set("keep", "x")
        assert store.size == 121
        for _ in range(100):  # swept within a few ticks; 5 s at most
            if store.size == 1:
                break
            await asyncio.sleep(0.05)
        assert store.size == 1 and await store.get("keep") == "x"
    finally:
        await store.close()
    assert store._sweeper is None  # close stops the sweep


async def test_embedded_sweep_is_bounded_per_tick() -> None:
    store = EmbeddedStore(prefix="t:", sweep_every_s=3600, sweep_max=10)  # swept by hand here
    try:
        for i in range(25):
            await store.set(f"k{i}", "x", ttl_s=0.01)
        await store.set("k3", "x", ttl_s=3600)  # a later TTL replaces the first one
        later = asyncio.get_running_loop().time() + 60
        removed = [store.sweep(now=later) for _ in range(4)]
        assert max(removed) <= 10 and removed[-1] == 0  # at most 10 examined per tick
        assert sum(removed) == 24 and store.size == 1
    finally:
        await store.close()


async def test_embedded_cache_keys_are_capped_oldest_write_first() -> None:
    """Distinct queries flooding the LLM-output caches within one TTL cannot outgrow memory;
    other keys are never evicted for them."""
    store = EmbeddedStore(prefix="t:", max_cache_keys=3)
    try:
        await store.set("apikeys-like", "keep")
        for i in range(5):
            await store.set(f"cache:instruction:{i}", str(i), ttl_s=3600)
        await store.set("cache:instruction:2", "again", ttl_s=3600)  # written again: newest
        await store.set("cache:instruction:5", "5", ttl_s=3600)
        present = [i for i in range(6) if await store.get(f"cache:instruction:{i}") is not None]
        assert present == [2, 4, 5]
        assert await store.get("apikeys-like") == "keep"
        assert store.size == 4
    finally:
        await store.close()
