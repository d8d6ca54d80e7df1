"""The store contract shared by Redis and the embedded store.

Values are strings (JSON where structured). Keys are given without the
store's prefix; each implementation namespaces them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator


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

    @abstractmethod
    async def close(self) -> None: ...
