"""The stored registry: seeded from the file, versioned, tolerant of what older versions wrote."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig, ExpertSpec, parse_config
from coe.store import keys
from coe.store.base import Store
from coe.store.embedded import EmbeddedStore
from coe.store.redis_store import RedisStore


async def test_seed_then_read_back_and_drop_stale_per_expert_categories() -> None:
    cfg = parse_config(
        {
            "experts": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:9"]}],
            "default_expert": "a",
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(cfg)
    assert list(registry.snapshot()) == ["a"] and registry.version == 1
    # A registry written before the `categories:` table was the only map.
    old = {**json.loads(cfg.experts[0].model_dump_json()), "categories": ["math"]}
    await store.hset(keys.EXPERTS, {"a": json.dumps(old)})
    await store.incr(keys.EXPERTS_VERSION)
    assert await registry.refresh()
    assert registry.get("a").model == "m"


def two_experts() -> CoeConfig:
    endpoints = ["http://127.0.0.1:9"]
    return parse_config(
        {
            "experts": [
                {"name": "a", "model": "m", "endpoints": endpoints},
                {"name": "b", "model": "m", "endpoints": endpoints},
            ],
            "default_expert": "a",
        }
    )


async def seeded(store: Store) -> ExpertRegistry:
    registry = ExpertRegistry(store)
    await registry.seed(two_experts())
    extra = ExpertSpec(name="c", model="m", endpoints=["http://127.0.0.1:9"])
    await registry.upsert(extra)  # not in the file: only the snapshot still knows it
    return registry


async def test_a_wiped_store_is_restored_from_the_snapshot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = EmbeddedStore()
    registry = await seeded(store)
    assert registry.version == 2
    await store.delete(keys.EXPERTS, keys.EXPERTS_VERSION)  # FLUSHALL, restart, eviction
    with caplog.at_level(logging.WARNING, logger="coe.experts.registry"):
        await registry.refresh()
    assert list(registry.snapshot()) == ["a", "b", "c"]
    assert sorted(await store.hgetall(keys.EXPERTS)) == ["a", "b", "c"]
    assert await store.get(keys.EXPERTS_VERSION) == "3" and registry.version == 3
    (line,) = [r.getMessage() for r in caplog.records]
    assert "restored 3 experts from this replica's last snapshot as version 3" in line
    assert not await registry.refresh()  # restored once; nothing more to do
    assert registry.restored == 1


async def test_an_empty_hash_or_a_lost_version_is_a_lost_registry() -> None:
    store = EmbeddedStore()
    registry = await seeded(store)
    await store.delete(keys.EXPERTS)  # version left, experts gone
    await registry.refresh(force=True)
    assert sorted(await store.hgetall(keys.EXPERTS)) == ["a", "b", "c"]
    assert registry.version == 3
    await store.delete(keys.EXPERTS_VERSION)  # experts left, version gone: keep the experts
    await store.hdel(keys.EXPERTS, "b")
    await registry.refresh()
    assert list(registry.snapshot()) == ["a", "c"]
    assert await store.get(keys.EXPERTS_VERSION) == "4"


async def test_a_fresh_replica_restores_from_the_experts_file(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = EmbeddedStore()
    await store.set(keys.EXPERTS_VERSION, "7")  # the experts were evicted, the version not
    registry = ExpertRegistry(store)
    with caplog.at_level(logging.WARNING, logger="coe.experts.registry"):
        await registry.seed(two_experts())
    assert list(registry.snapshot()) == ["a", "b"] and registry.version == 8
    assert "restored 2 experts from the experts file" in caplog.text


async def test_a_replica_that_sees_the_reseed_lock_taken_does_not_write() -> None:
    store = EmbeddedStore()
    registry = await seeded(store)
    await store.delete(keys.EXPERTS, keys.EXPERTS_VERSION)
    await store.set(keys.EXPERTS_RESEED_LOCK, "another replica", ttl_s=0.2)
    assert not await registry.refresh()
    assert await store.hgetall(keys.EXPERTS) == {}  # left to the lock holder
    assert list(registry.snapshot()) == ["a", "b", "c"]  # and still serving
    await asyncio.sleep(0.3)  # the holder died: its lock expires, the next refresh restores
    assert await registry.refresh()
    assert sorted(await store.hgetall(keys.EXPERTS)) == ["a", "b", "c"]


async def test_the_store_wins_when_its_version_went_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis restarted empty and an operator wrote one expert: version 1 < ours."""
    store = EmbeddedStore()
    registry = await seeded(store)
    await store.delete(keys.EXPERTS, keys.EXPERTS_VERSION)
    only = ExpertSpec(name="z", model="m", endpoints=["http://127.0.0.1:9"])
    await store.hset(keys.EXPERTS, {"z": only.model_dump_json()})
    await store.incr(keys.EXPERTS_VERSION)
    with caplog.at_level(logging.WARNING, logger="coe.experts.registry"):
        assert await registry.refresh()
    assert list(registry.snapshot()) == ["z"] and registry.version == 1
    assert "version went back from 2 to 1" in caplog.text
    assert registry.restored == 0


async def test_concurrent_replicas_restore_once(redis_store: RedisStore) -> None:
    replicas = [ExpertRegistry(redis_store) for _ in range(4)]
    for r in replicas:
        await r.seed(two_experts())
    await redis_store.delete(keys.EXPERTS, keys.EXPERTS_VERSION)
    for _ in range(3):
        await asyncio.gather(*(r.refresh() for r in replicas))
    assert sum(r.restored for r in replicas) == 1
    assert {r.version for r in replicas} == {2}
    assert all(list(r.snapshot()) == ["a", "b"] for r in replicas)
    assert sorted(await redis_store.hgetall(keys.EXPERTS)) == ["a", "b"]
