"""An in-process store for a single node: no server, nothing to set up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from coe.store.base import Store


class EmbeddedStore(Store):
    def __init__(self, prefix: str = "coe:"):
        self.prefix = prefix
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._subscribers: dict[str, set[asyncio.Queue[str]]] = {}

    def _live(self, key: str) -> bool:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= time.monotonic():
            self._data.pop(key, None)
            self._expiry.pop(key, None)
        return key in self._data

    def _expire(self, key: str, ttl_s: float | None) -> None:
        if ttl_s is None:
            self._expiry.pop(key, None)
        else:
            self._expiry[key] = time.monotonic() + ttl_s

    async def ping(self) -> bool:
        return True

    async def get(self, key: str) -> str | None:
        if not self._live(key):
            return None
        value = self._data[key]
        if not isinstance(value, str):
            raise TypeError(f"key {key!r} holds a {type(value).__name__}, not a string")
        return value

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._data[key] = value
        self._expire(key, ttl_s)

    async def delete(self, *keys: str) -> int:
        n = 0
        for key in keys:
            if self._live(key):
                n += 1
            self._data.pop(key, None)
            self._expiry.pop(key, None)
        return n

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        created = not self._live(key)
        value = int(self._data.get(key, "0")) + amount
        self._data[key] = str(value)
        if created:
            self._expire(key, ttl_s)
        return value

    def _hash(self, key: str, create: bool = False) -> dict[str, str]:
        if not self._live(key):
            if not create:
                return {}
            self._data[key] = {}
        value = self._data[key]
        if not isinstance(value, dict):
            raise TypeError(f"key {key!r} holds a {type(value).__name__}, not a hash")
        return value

    async def hset(self, key: str, mapping: dict[str, str]) -> None:
        self._hash(key, create=True).update(mapping)

    async def hget(self, key: str, field: str) -> str | None:
        return self._hash(key).get(field)

    async def hgetall(self, key: str) -> dict[str, str]:
        return dict(self._hash(key))

    async def hdel(self, key: str, *fields: str) -> int:
        h = self._hash(key)
        n = sum(1 for f in fields if h.pop(f, None) is not None)
        if self._live(key) and not h:
            del self._data[key]
        return n

    async def keys(self, pattern_prefix: str = "") -> list[str]:
        return sorted(k for k in list(self._data) if k.startswith(pattern_prefix) and self._live(k))

    async def publish(self, channel: str, message: str) -> None:
        for queue in list(self._subscribers.get(channel, ())):
            queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers.setdefault(channel, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers[channel].discard(queue)

    async def close(self) -> None:
        self._subscribers.clear()
