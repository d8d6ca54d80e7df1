"""The store contract shared by Redis and the embedded store.

Values are strings (JSON where structured). Keys are given without the
store's prefix; each implementation namespaces them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

StreamEntry = tuple[str, dict[str, str]]


class Store(ABC):
    prefix: str

    @abstractmethod
    async def ping(self) -> bool: ...

    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    async def delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def expire(self, key: str, ttl_s: float) -> bool:
        """Make an existing key expire in `ttl_s`; False when there is no such key."""

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Add to an integer counter; `ttl_s` is applied when the counter is created."""

    @abstractmethod
    async def hset(self, key: str, mapping: dict[str, str]) -> None: ...

    @abstractmethod
    async def hget(self, key: str, field: str) -> str | None: ...

    @abstractmethod
    async def hgetall(self, key: str) -> dict[str, str]: ...

    @abstractmethod
    async def hdel(self, key: str, *fields: str) -> int: ...

    @abstractmethod
    async def keys(self, pattern_prefix: str = "") -> list[str]:
        """Keys (without the store prefix) that start with `pattern_prefix`."""

    @abstractmethod
    async def publish(self, channel: str, message: str) -> None: ...

    @abstractmethod
    def subscribe(self, channel: str) -> AsyncIterator[str]:
        """Messages published to `channel` after the call, until the iterator is closed."""

    # -- for batch jobs: conditional writes and streams with consumer groups ---------------
    @abstractmethod
    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool: ...

    @abstractmethod
    async def hsetnx(self, key: str, field: str, value: str) -> bool:
        """Set a hash field only if it is not set; True when this call set it."""

    @abstractmethod
    async def hlen(self, key: str) -> int: ...

    @abstractmethod
    async def hmget(self, key: str, fields: list[str]) -> list[str | None]: ...

    @abstractmethod
    async def xadd(self, stream: str, fields: dict[str, str]) -> str: ...

    @abstractmethod
    async def xgroup_create(self, stream: str, group: str) -> None:
        """Create the consumer group (and the stream) if missing; no-op if it exists."""

    @abstractmethod
    async def xreadgroup(
        self, stream: str, group: str, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[StreamEntry]:
        """New entries for this consumer; they stay pending until acknowledged."""

    @abstractmethod
    async def xautoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[StreamEntry]:
        """Take over entries pending longer than `min_idle_ms` (their consumer died)."""

    @abstractmethod
    async def xack(self, stream: str, group: str, *ids: str) -> int: ...

    @abstractmethod
    async def xdeliveries(self, stream: str, group: str, entry_id: str) -> int:
        """How many times the group delivered this pending entry (0 when it is not pending)."""

    @abstractmethod
    async def xextend(self, stream: str, group: str, consumer: str, entry_id: str) -> bool:
        """Reset the idle time of an entry `consumer` holds, without counting a delivery
        (XCLAIM JUSTID); False when the entry is no longer pending for `consumer`."""

    @abstractmethod
    async def xbacklog(self, stream: str, group: str) -> list[StreamEntry]:
        """Entries the group has not acknowledged: those waiting for delivery, then those
        pending (delivered, not yet acknowledged)."""

    @abstractmethod
    async def xdel(self, stream: str, *ids: str) -> int:
        """Forget entries (acknowledged ones), so a stream holds only work still to do."""

    @abstractmethod
    async def xtrim_acknowledged(self, stream: str, group: str) -> int:
        """Drop every entry `group` has acknowledged that XDEL missed (a consumer died between
        acknowledging and deleting), never one waiting or pending; how many were dropped. The
        stream must have no other group."""

    @abstractmethod
    async def xlen(self, stream: str) -> int:
        """How many entries the stream holds."""

    @abstractmethod
    async def xdepth(self, stream: str, group: str) -> tuple[int, int]:
        """(waiting, pending): entries not yet delivered to the group, and delivered but not
        acknowledged."""

    def circuit_open(self) -> bool:
        """True while the store refuses calls at once after repeated connection failures
        (a Redis store's circuit breaker); a store that cannot fail that way never is."""
        return False

    @abstractmethod
    async def close(self) -> None: ...
