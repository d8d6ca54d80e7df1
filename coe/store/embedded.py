"""An in-process store for a single node: no server, nothing to set up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from coe.store.base import Store, StreamEntry


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

    def _stream(self, stream: str) -> _Stream:
        if not self._live(stream):
            self._data[stream] = _Stream()
        value = self._data[stream]
        if not isinstance(value, _Stream):
            raise TypeError(f"key {stream!r} holds a {type(value).__name__}, not a stream")
        return value

    async def xadd(self, stream: str, fields: dict[str, str]) -> str:
        return self._stream(stream).add(fields)

    async def xgroup_create(self, stream: str, group: str) -> None:
        self._stream(stream).groups.setdefault(group, _Group())

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
        pending[entry_id] = _Pending(consumer, time.monotonic(), held.deliveries)
        return True

    async def xbacklog(self, stream: str, group: str) -> list[StreamEntry]:
        s = self._stream(stream)
        g = s.groups.get(group)
        if g is None:
            return []
        waiting = s.entries[g.next_index :]
        held = [(i, s.by_id[i]) for i in sorted(g.pending, key=_id_order)]
        return [(i, dict(f)) for i, f in waiting + held]

    async def xdel(self, stream: str, *ids: str) -> int:
        return self._stream(stream).forget(ids)

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


@dataclass(frozen=True)
class _Pending:
    consumer: str
    at: float  # when last delivered or extended (monotonic)
    deliveries: int


@dataclass
class _Group:
    next_index: int = 0
    pending: dict[str, _Pending] = field(default_factory=dict)


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


class _Stream:
    """Redis stream semantics for one process: ids, groups, pending entries, claiming."""

    def __init__(self) -> None:
        self.entries: list[StreamEntry] = []
        self.by_id: dict[str, dict[str, str]] = {}
        self.groups: dict[str, _Group] = {}
        self.forgotten: set[str] = set()  # deleted, still in `entries` until they reach its front
        self._seq = 0
        self._added = asyncio.Event()

    def forget(self, ids: tuple[str, ...]) -> int:
        """XDEL: drop entries; the front of the list is compacted (group positions move with
        it), entries further in go once everything before them has."""
        known = [i for i in ids if i in self.by_id and i not in self.forgotten]
        self.forgotten.update(known)
        while self.entries and self.entries[0][0] in self.forgotten:
            entry_id, _ = self.entries.pop(0)
            self.forgotten.discard(entry_id)
            del self.by_id[entry_id]
            for g in self.groups.values():
                g.next_index = max(0, g.next_index - 1)
        return len(known)

    def add(self, fields: dict[str, str]) -> str:
        self._seq += 1
        entry_id = f"{int(time.time() * 1000)}-{self._seq}"
        self.entries.append((entry_id, dict(fields)))
        self.by_id[entry_id] = dict(fields)
        self._added.set()
        self._added = asyncio.Event()
        return entry_id

    async def wait_for_more(self) -> None:
        await self._added.wait()

    def group(self, name: str) -> _Group:
        try:
            return self.groups[name]
        except KeyError:
            raise KeyError(f"NOGROUP no consumer group {name!r}") from None

    def deliver(self, group: str, consumer: str, count: int) -> list[StreamEntry]:
        g = self.group(group)
        out = self.entries[g.next_index : g.next_index + count]
        g.next_index += len(out)
        now = time.monotonic()
        for entry_id, _ in out:
            g.pending[entry_id] = _Pending(consumer, now, 1)
        return [(i, dict(f)) for i, f in out]

    def claim(self, group: str, consumer: str, min_idle_s: float, count: int) -> list[StreamEntry]:
        g = self.group(group)
        now = time.monotonic()
        out: list[StreamEntry] = []
        for entry_id, held in list(g.pending.items()):
            if len(out) >= count:
                break
            if now - held.at >= min_idle_s:
                g.pending[entry_id] = _Pending(consumer, now, held.deliveries + 1)
                out.append((entry_id, dict(self.by_id[entry_id])))
        return out
