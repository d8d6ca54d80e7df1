"""A RedisStore under a fresh key prefix, emptied on exit: isolation on a shared server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from coe.store.redis_store import RedisStore


@asynccontextmanager
async def isolated_redis_store(url: str, label: str = "test") -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(url, prefix=f"coe-{label}:{uuid.uuid4().hex[:12]}:")
    await store.ping()
    try:
        yield store
    finally:
        keys = [k async for k in store.client.scan_iter(match=store.prefix + "*")]
        if keys:
            await store.client.delete(*keys)
        await store.close()
