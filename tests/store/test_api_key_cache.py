"""API keys through store trouble: a bounded local cache while the store is down, a bounded
grace for known keys after the store lost every key, and rate limits that fail open at no
cost once the store's circuit is open."""

from __future__ import annotations

import asyncio
import time

import pytest

from coe.errors import StoreUnavailable, Unauthorized
from coe.security import ApiKeyStore
from coe.store.embedded import EmbeddedStore
from coe.store.keys import API_KEYS
from coe.store.redis_client import RedisOptions
from coe.store.redis_store import RedisStore
from tests.support.net import free_port


async def test_the_cache_for_outages_is_bounded_least_recent_out() -> None:
    store = EmbeddedStore()
    api_keys = ApiKeyStore(store, cache_size=2)
    secrets = [(await api_keys.create(f"k{i}", 100))[1] for i in range(3)]
    for secret in [*secrets, secrets[1]]:  # k1 used last, k0 least recently
        await api_keys.authenticate(secret)
    # The store goes away (nothing listens on this port).
    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    api_keys.store = dead
    try:
        assert (await api_keys.authenticate(secrets[1])).name == "k1"
        assert (await api_keys.authenticate(secrets[2])).name == "k2"
        with pytest.raises(StoreUnavailable):  # evicted: it cannot be verified
            await api_keys.authenticate(secrets[0])
    finally:
        await dead.close()
        await store.close()


async def test_known_keys_outlive_a_wiped_key_store_for_a_bounded_time() -> None:
    store = EmbeddedStore()
    api_keys = ApiKeyStore(store, wipe_grace_s=0.3)
    record, secret = await api_keys.create("team", 100)
    await api_keys.authenticate(secret)
    await store.delete(API_KEYS)  # Redis lost its data
    assert await api_keys.authenticate(secret) == record
    with pytest.raises(Unauthorized):  # a key never seen is not let in
        await api_keys.authenticate("coe-sk-never-seen")
    await asyncio.sleep(0.35)
    with pytest.raises(Unauthorized):
        await api_keys.authenticate(secret)


async def test_a_key_store_holding_any_key_ends_the_grace() -> None:
    """Once operators recreate keys, the store is the authority again: a key it does not
    hold is unknown, whatever the cache remembers."""
    store = EmbeddedStore()
    api_keys = ApiKeyStore(store)
    _, old = await api_keys.create("old", 100)
    await api_keys.authenticate(old)
    await store.delete(API_KEYS)
    await api_keys.authenticate(old)
    other = ApiKeyStore(store)  # another replica
    _, new = await other.create("new", 100)
    assert (await api_keys.authenticate(new)).name == "new"
    with pytest.raises(Unauthorized):
        await api_keys.authenticate(old)


async def test_rate_limits_fail_open_without_a_timeout_per_request(black_hole: int) -> None:
    timeout_s = 0.5
    options = RedisOptions(socket_timeout_s=timeout_s, breaker_failures=1, breaker_cool_down_s=60)
    hung = RedisStore.from_url(f"redis://127.0.0.1:{black_hole}/0", options=options)
    api_keys = ApiKeyStore(EmbeddedStore())
    record, _ = await api_keys.create("team", 1)
    api_keys.store = hung
    try:
        await api_keys.check_rate(record)  # pays one timeout, opens the circuit
        started = time.monotonic()
        for _ in range(20):  # over the limit of 1, yet let through: fail open
            await api_keys.check_rate(record)
        assert time.monotonic() - started < timeout_s / 10
    finally:
        await hung.close()
