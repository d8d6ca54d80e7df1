"""Redis stream semantics for the embedded store, in one process: ids, consumer groups,
pending entries, claiming."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from coe.store.base import StreamEntry


@dataclass(frozen=True)
class Pending:
    consumer: str
    at: float  # when last delivered or extended (monotonic)
    deliveries: int


@dataclass
class Group:
    next_index: int = 0
    pending: dict[str, Pending] = field(default_factory=dict)


def id_order(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


class Stream:
    """Redis stream semantics for one process: ids, groups, pending entries, claiming."""

    def __init__(self) -> None:
        self.entries: list[StreamEntry] = []
        self.by_id: dict[str, dict[str, str]] = {}
        self.groups: dict[str, Group] = {}
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

    def trim_acknowledged(self, group: Group) -> int:
        """Drop delivered, acknowledged entries from the front (what XDEL left behind)."""
        dropped = 0
        while self.entries and group.next_index > 0 and self.entries[0][0] not in group.pending:
            entry_id, _ = self.entries.pop(0)
            if entry_id not in self.forgotten:
                dropped += 1
            self.forgotten.discard(entry_id)
            del self.by_id[entry_id]
            for g in self.groups.values():
                g.next_index = max(0, g.next_index - 1)
        return dropped

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

    def group(self, name: str) -> Group:
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
            g.pending[entry_id] = Pending(consumer, now, 1)
        return [(i, dict(f)) for i, f in out]

    def claim(self, group: str, consumer: str, min_idle_s: float, count: int) -> list[StreamEntry]:
        g = self.group(group)
        now = time.monotonic()
        out: list[StreamEntry] = []
        for entry_id, held in list(g.pending.items()):
            if len(out) >= count:
                break
            if now - held.at >= min_idle_s:
                g.pending[entry_id] = Pending(consumer, now, held.deliveries + 1)
                out.append((entry_id, dict(self.by_id[entry_id])))
        return out
