"""The store's circuit breaker: its states on a fake clock, then a RedisStore against a
server that accepts connections and never answers (a hung Redis) and against a real Redis
behind a proxy that is cut and restored."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from coe.errors import StoreUnavailable
from coe.store.breaker import CircuitBreaker
from coe.store.redis_client import RedisOptions
from coe.store.redis_store import RedisStore
from tests.support.tcp_proxy import TcpProxy

REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cool_down_s=5, clock=clock)
    for _ in range(5):  # failures separated by a success never add up
        breaker.allow()
        breaker.failed(OSError("refused"))
        breaker.allow()
        breaker.failed(OSError("refused"))
        breaker.allow()
        breaker.succeeded()
    assert breaker.state == "closed"
    for _ in range(3):
        breaker.allow()
        breaker.failed(TimeoutError("timed out"))
    assert breaker.state == "open" and breaker.is_open
    with pytest.raises(StoreUnavailable) as refused:
        breaker.allow()
    assert "Redis is unavailable" in refused.value.message
    assert "3 consecutive failures (last: timed out)" in refused.value.message


def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cool_down_s=5, clock=clock)
    breaker.failed(OSError("refused"))
    clock.now += 4.9
    with pytest.raises(StoreUnavailable):
        breaker.allow()
    clock.now += 0.2
    breaker.allow()  # the probe
    assert breaker.state == "half_open"
    with pytest.raises(StoreUnavailable, match="a probe is in flight"):
        breaker.allow()
    breaker.failed(OSError("still refused"))  # another full cool-down
    assert breaker.state == "open"
    clock.now += 4.9
    with pytest.raises(StoreUnavailable):
        breaker.allow()
    clock.now += 0.2
    breaker.allow()
    breaker.abandoned()  # a cancelled probe proves nothing: the next caller probes
    breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"
    breaker.allow()


def test_open_and_close_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cool_down_s=1, clock=clock)
    with caplog.at_level(logging.WARNING, logger="coe.store.breaker"):
        for _ in range(50):  # a long outage: refusals, failed probes
            clock.now += 0.3
            try:
                breaker.allow()
            except StoreUnavailable:
                continue
            breaker.failed(OSError("refused"))
        clock.now += 1
        breaker.allow()
        breaker.succeeded()
        for _ in range(10):
            breaker.allow()
            breaker.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "circuit open after 2 consecutive failures" in lines[0]
    assert "circuit closed" in lines[1]
    assert breaker.opened_count == 1


async def test_a_hung_redis_costs_a_timeout_only_until_the_circuit_opens(black_hole: int) -> None:
    timeout_s = 0.5
    options = RedisOptions(
        socket_timeout_s=timeout_s,
        connect_timeout_s=timeout_s,
        breaker_failures=2,
        breaker_cool_down_s=60,
    )
    store = RedisStore.from_url(f"redis://127.0.0.1:{black_hole}/0", options=options)
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="Redis is unavailable"):
                await store.get("k")
            assert time.monotonic() - started < 4 * timeout_s  # no hidden retries
        assert store.circuit_open()
        for call in (store.get("k"), store.incr("c"), store.hget("h", "f"), store.keys("p")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="failing fast"):
                await call
            assert time.monotonic() - started < timeout_s / 10
    finally:
        await store.close()


async def test_blocking_reads_outlive_the_socket_timeout() -> None:
    """XREADGROUP BLOCK waits longer than one command may: not mistaken for a hang."""
    options = RedisOptions(socket_timeout_s=0.2, breaker_failures=1, breaker_cool_down_s=60)
    prefix = f"coe-test-breaker:{os.getpid()}:"
    store = RedisStore.from_url(REDIS_URL, prefix=prefix, options=options)
    try:
        await store.xgroup_create("s", "g")
        started = time.monotonic()
        assert await store.xreadgroup("s", "g", "c", block_ms=700) == []
        assert time.monotonic() - started >= 0.6
        assert not store.circuit_open()
        await store.xadd("s", {"a": "1"})
        assert [f for _, f in await store.xreadgroup("s", "g", "c", block_ms=700)] == [{"a": "1"}]
    finally:
        await store.delete("s")
        await store.close()


async def test_the_circuit_closes_when_redis_is_back() -> None:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = await TcpProxy("127.0.0.1", port).start()
    options = RedisOptions(socket_timeout_s=0.5, breaker_failures=2, breaker_cool_down_s=0.3)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    store = RedisStore.from_url(url, prefix=f"coe-test-breaker:{os.getpid()}:", options=options)
    try:
        await store.set("k", "v")
        await proxy.cut()
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await store.get("k")
        assert store.circuit_open()
        await proxy.restore()
        deadline = time.monotonic() + 5
        while store.circuit_open() and time.monotonic() < deadline:
            try:
                assert await store.get("k") == "v"
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        assert not store.circuit_open()
        assert await store.get("k") == "v"
    finally:
        await store.delete("k")
        await store.close()
        await proxy.cut()
