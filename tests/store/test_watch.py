"""Following a channel through a Redis outage: it resubscribes by itself once Redis is back,
and while it is gone it waits between attempts instead of spinning."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid

import pytest

from coe.store.redis_client import RedisOptions
from coe.store.redis_store import RedisStore
from coe.store.watch import follow_channel
from tests.support.tcp_proxy import TcpProxy

REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def test_a_follower_resubscribes_after_an_outage_without_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = await TcpProxy("127.0.0.1", port).start()
    prefix = f"coe-test-watch:{uuid.uuid4().hex[:8]}:"
    options = RedisOptions(breaker_cool_down_s=0.2)
    store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, options=options)
    publisher = RedisStore.from_url(REDIS_URL, prefix=prefix)
    got: list[str] = []

    async def handler(message: str) -> None:
        got.append(message)

    async def published(message: str) -> bool:
        for _ in range(100):  # 5 s: the subscription may not be live yet
            await publisher.publish("chan", message)
            await asyncio.sleep(0.05)
            if message in got:
                return True
        return False

    follower = asyncio.create_task(follow_channel(store, "chan", handler, 0.1, 0.4))
    try:
        with caplog.at_level(logging.DEBUG, logger="coe.store.watch"):
            assert await published("before")
            await proxy.cut()
            await asyncio.sleep(2)  # attempts: 0.1, 0.2, 0.4, 0.4, ... s apart
            await proxy.restore()
            assert await published("after")
        lost = [r for r in caplog.records if "lost chan notices" in r.getMessage()]
        assert 3 <= len(lost) <= 10, [r.getMessage() for r in lost]
        assert [r.levelno for r in lost].count(logging.WARNING) == 1
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await store.close()
        await publisher.close()
        await proxy.cut()
