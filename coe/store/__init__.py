"""State behind one interface: Redis for many nodes, an embedded store for one."""

from coe.store.base import Store
from coe.store.embedded import EmbeddedStore
from coe.store.redis_client import RedisOptions
from coe.store.redis_store import RedisStore


def open_store(
    redis_url: str | None, prefix: str = "coe:", options: RedisOptions | None = None
) -> Store:
    """Redis when a URL is configured (timeouts and breaker from `options`, e.g.
    `RedisOptions.from_settings(settings)`), else the embedded in-process store."""
    if redis_url:
        return RedisStore.from_url(redis_url, prefix=prefix, options=options)
    return EmbeddedStore(prefix=prefix)


__all__ = ["EmbeddedStore", "RedisOptions", "RedisStore", "Store", "open_store"]
