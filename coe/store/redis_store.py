"""The shared store on Redis (redis-py asyncio); every key carries the prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from coe.errors import StoreUnavailable
from coe.store.base import Store, StreamEntry


class RedisStore(Store):
    def __init__(self, client: aioredis.Redis, prefix: str = "coe:"):
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "coe:") -> RedisStore:
        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, health_check_interval=15
        )
        return cls(client, prefix=prefix)

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"Redis is unavailable: {err}") from err

    async def ping(self) -> bool:
        return bool(await self._run(self.client.ping()))

    async def get(self, key: str) -> str | None:
        value: str | None = await self._run(self.client.get(self._k(key)))
        return value

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        px = int(ttl_s * 1000) if ttl_s is not None else None
        await self._run(self.client.set(self._k(key), value, px=px))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._run(self.client.delete(*(self._k(k) for k in keys))))

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        k = self._k(key)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(k, amount)
            if ttl_s is not None:
                pipe.pexpire(k, int(ttl_s * 1000), nx=True)
            result = await self._run(pipe.execute())
        return int(result[0])

    async def hset(self, key: str, mapping: dict[str, str]) -> None:
        if mapping:
            fields: dict[Any, Any] = dict(mapping)
            await self._run(self.client.hset(self._k(key), mapping=fields))

    async def hget(self, key: str, field: str) -> str | None:
        value: str | None = await self._run(self.client.hget(self._k(key), field))
        return value

    async def hgetall(self, key: str) -> dict[str, str]:
        return dict(await self._run(self.client.hgetall(self._k(key))))

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        return int(await self._run(self.client.hdel(self._k(key), *fields)))

    async def keys(self, pattern_prefix: str = "") -> list[str]:
        out = []
        match = self._k(pattern_prefix).replace("*", r"\*") + "*"
        try:
            async for k in self.client.scan_iter(match=match, count=500):
                out.append(k[len(self.prefix) :])
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"Redis is unavailable: {err}") from err
        return sorted(out)

    async def publish(self, channel: str, message: str) -> None:
        await self._run(self.client.publish(self._k(channel), message))

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._run(pubsub.subscribe(self._k(channel)))
            try:
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        yield str(msg["data"])
            except (RedisError, OSError) as err:
                raise StoreUnavailable(f"Redis is unavailable: {err}") from err
        finally:
            await pubsub.aclose()

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        px = int(ttl_s * 1000) if ttl_s is not None else None
        return bool(await self._run(self.client.set(self._k(key), value, px=px, nx=True)))

    async def hsetnx(self, key: str, field: str, value: str) -> bool:
        return bool(await self._run(self.client.hsetnx(self._k(key), field, value)))

    async def hlen(self, key: str) -> int:
        return int(await self._run(self.client.hlen(self._k(key))))

    async def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        if not fields:
            return []
        return list(await self._run(self.client.hmget(self._k(key), fields)))

    async def xadd(self, stream: str, fields: dict[str, str]) -> str:
        data: dict[Any, Any] = dict(fields)
        return str(await self._run(self.client.xadd(self._k(stream), data)))

    async def xgroup_create(self, stream: str, group: str) -> None:
        try:
            await self.client.xgroup_create(self._k(stream), group, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise StoreUnavailable(f"Redis refused to create group {group}: {err}") from err
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"Redis is unavailable: {err}") from err

    async def xreadgroup(
        self, stream: str, group: str, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[StreamEntry]:
        reply = await self._run(
            self.client.xreadgroup(
                group, consumer, {self._k(stream): ">"}, count=count, block=block_ms
            )
        )
        return [(str(i), dict(f)) for _, entries in (reply or []) for i, f in entries]

    async def xautoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[StreamEntry]:
        reply = await self._run(
            self.client.xautoclaim(
                self._k(stream),
                group,
                consumer,
                min_idle_time=min_idle_ms,
                start_id="0-0",
                count=count,
            )
        )
        claimed = reply[1] if reply else []
        return [(str(i), dict(f)) for i, f in claimed if f is not None]

    async def xack(self, stream: str, group: str, *ids: str) -> int:
        if not ids:
            return 0
        return int(await self._run(self.client.xack(self._k(stream), group, *ids)))

    async def close(self) -> None:
        await self.client.aclose()
