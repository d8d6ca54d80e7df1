"""An in-process store for a single node: no server, nothing to set up.

Keys with a TTL are also expired actively, like Redis does: a sweep task (started with the
first TTL, or by `start()`; stopped by `close()`) removes a bounded number of expired keys
per tick, so caches and rate windows nobody reads again do not pile up. Cache keys
(`cache:…`, per-query LLM outputs) are also capped in number, the least recently written
going first (`max_cache_keys`), so a flood of distinct queries cannot outgrow memory
within one TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from coe.store.base import Store, StreamEntry
from coe.store.embedded_stream import Group, Pending, Stream, id_order

CACHE_PREFIX = "cache:"


class EmbeddedStore(Store):
    def __init__(
        self,
        prefix: str = "coe:",
        sweep_every_s: float = 1.0,
        sweep_max: int = 1000,
        max_cache_keys: int = 100_000,
    ):
        self.prefix = prefix
        self.sweep_every_s = sweep_every_s
        self.sweep_max = sweep_max  # keys examined per tick at most
        self.max_cache_keys = max_cache_keys
        self._data: dict[str, Any] = {}
        self._caches: OrderedDict[str, None] = OrderedDict()  # cache keys, oldest write first
        self._expiry: dict[str, float] = {}
        # (deadline, key), soonest first; entries whose key got another deadline are stale
        # and skipped when they come up
        self._deadlines: list[tuple[float, str]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._subscribers: dict[str, set[asyncio.Queue[str]]] = {}

    def _live(self, key: str) -> bool:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= time.monotonic():
            self._data.pop(key, None)
            self._caches.pop(key, None)
            self._expiry.pop(key, None)
        return key in self._data

    def _expire(self, key: str, ttl_s: float | None) -> None:
        if ttl_s is None:
            self._expiry.pop(key, None)
            return
        deadline = time.monotonic() + ttl_s
        self._expiry[key] = deadline
        heapq.heappush(self._deadlines, (deadline, key))
        if len(self._deadlines) > 2 * len(self._expiry) + self.sweep_max:  # mostly stale
            self._deadlines = [(d, k) for k, d in self._expiry.items()]
            heapq.heapify(self._deadlines)
        self.start()

    @property
    def size(self) -> int:
        """Keys held now, expired ones not yet removed included: what the sweep bounds."""
        return len(self._data)

    def start(self) -> None:
        """Start the expiry sweep (idempotent); needs a running event loop, which any
        caller setting a TTL has."""
        if self._sweeper is None or self._sweeper.done():
            with contextlib.suppress(RuntimeError):  # no running loop: started later
                self._sweeper = asyncio.get_running_loop().create_task(
                    self._sweep_forever(), name="embedded-store-expiry"
                )

    def sweep(self, now: float | None = None) -> int:
        """Remove keys whose TTL has passed, examining at most `sweep_max`; how many went."""
        now = time.monotonic() if now is None else now
        removed = 0
        for _ in range(self.sweep_max):
            if not self._deadlines or self._deadlines[0][0] > now:
                break
            deadline, key = heapq.heappop(self._deadlines)
            if self._expiry.get(key) == deadline:
                self._data.pop(key, None)
                self._caches.pop(key, None)
                del self._expiry[key]
                removed += 1
        return removed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            self.sweep()

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
        if key.startswith(CACHE_PREFIX):
            self._caches[key] = None
            self._caches.move_to_end(key)
            while len(self._caches) > self.max_cache_keys:
                oldest, _ = self._caches.popitem(last=False)
                self._data.pop(oldest, None)
                self._expiry.pop(oldest, None)

    async def delete(self, *keys: str) -> int:
        n = 0
        for key in keys:
            if self._live(key):
                n += 1
            self._data.pop(key, None)
            self._caches.pop(key, None)
            self._expiry.pop(key, None)
        return n

    async def expire(self, key: str, ttl_s: float) -> bool:
        if not self._live(key):
            return False
        self._expire(key, ttl_s)
        return True

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

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        if self._live(key):
            return False
        await self.set(key, value, ttl_s)
        return True

    async def hsetnx(self, key: str, field: str, value: str) -> bool:
        h = self._hash(key, create=True)
        if field in h:
            return False
        h[field] = value
        return True

    async def hlen(self, key: str) -> int:
        return len(self._hash(key))

    async def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        h = self._hash(key)
        return [h.get(f) for f in fields]

    def _stream(self, stream: str) -> Stream:
        if not self._live(stream):
            self._data[stream] = Stream()
        value = self._data[stream]
        if not isinstance(value, Stream):
            raise TypeError(f"key {stream!r} holds a {type(value).__name__}, not a stream")
        return value

    async def xadd(self, stream: str, fields: dict[str, str]) -> str:
        return self._stream(stream).add(fields)

    async def xgroup_create(self, stream: str, group: str) -> None:
        self._stream(stream).groups.setdefault(group, Group())

    async def xreadgroup(
        self, stream: str, group: str, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[StreamEntry]:
        s = self._stream(stream)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            entries = s.deliver(group, consumer, count)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            try:
                await asyncio.wait_for(s.wait_for_more(), timeout=remaining)
            except TimeoutError:
                return []

    async def xautoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[StreamEntry]:
        return self._stream(stream).claim(group, consumer, min_idle_ms / 1000, count)

    async def xack(self, stream: str, group: str, *ids: str) -> int:
        pending = self._stream(stream).group(group).pending
        return sum(1 for i in ids if pending.pop(i, None) is not None)

    async def xdeliveries(self, stream: str, group: str, entry_id: str) -> int:
        held = self._stream(stream).group(group).pending.get(entry_id)
        return held.deliveries if held is not None else 0

    async def xextend(self, stream: str, group: str, consumer: str, entry_id: str) -> bool:
        pending = self._stream(stream).group(group).pending
        held = pending.get(entry_id)
        if held is None or held.consumer != consumer:
            return False
        pending[entry_id] = Pending(consumer, time.monotonic(), held.deliveries)
        return True

    async def xbacklog(self, stream: str, group: str) -> list[StreamEntry]:
        s = self._stream(stream)
        g = s.groups.get(group)
        if g is None:
            return []
        waiting = s.entries[g.next_index :]
        held = [(i, s.by_id[i]) for i in sorted(g.pending, key=id_order)]
        return [(i, dict(f)) for i, f in waiting + held]

    async def xdel(self, stream: str, *ids: str) -> int:
        return self._stream(stream).forget(ids)

    async def xtrim_acknowledged(self, stream: str, group: str) -> int:
        s = self._stream(stream)
        g = s.groups.get(group)
        return s.trim_acknowledged(g) if g is not None else 0

    async def xlen(self, stream: str) -> int:
        s = self._stream(stream)
        return len(s.entries) - len(s.forgotten)

    async def xdepth(self, stream: str, group: str) -> tuple[int, int]:
        s = self._stream(stream)
        g = s.groups.get(group)
        if g is None:
            return 0, 0
        return len(s.entries) - g.next_index, len(g.pending)

    async def close(self) -> None:
        self._subscribers.clear()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and not sweeper.done():
            sweeper.cancel()
            if sweeper.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
