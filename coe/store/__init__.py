"""State behind one interface: Redis for many nodes, an embedded store for one."""

from coe.store.base import Store
from coe.store.embedded import EmbeddedStore
from coe.store.redis_store import RedisStore


def open_store(redis_url: str | None, prefix: str = "coe:") -> Store:
    """Redis when a URL is configured, else the embedded in-process store."""
    if redis_url:
        return RedisStore.from_url(redis_url, prefix=prefix)
    return EmbeddedStore(prefix=prefix)


__all__ = ["EmbeddedStore", "RedisStore", "Store", "open_store"]
