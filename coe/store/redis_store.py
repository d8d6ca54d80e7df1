"""The shared store on Redis (redis-py asyncio); every key carries the prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from coe.errors import StoreUnavailable
from coe.store.base import Store, StreamEntry

# XCLAIM JUSTID resets an entry's idle time without counting a delivery; checking the owner
# in the same script keeps a worker from taking back a unit another worker has reclaimed.
_EXTEND = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""
_PAGE = 1000


class RedisStore(Store):
    def __init__(self, client: aioredis.Redis, prefix: str = "coe:"):
        self.client = client
        self.prefix = prefix
        self._extend = client.register_script(_EXTEND)

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

    async def expire(self, key: str, ttl_s: float) -> bool:
        return bool(await self._run(self.client.pexpire(self._k(key), int(ttl_s * 1000))))

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

    async def xdeliveries(self, stream: str, group: str, entry_id: str) -> int:
        reply = await self._run(
            self.client.xpending_range(self._k(stream), group, entry_id, entry_id, count=1)
        )
        return int(reply[0]["times_delivered"]) if reply else 0

    async def xextend(self, stream: str, group: str, consumer: str, entry_id: str) -> bool:
        args = [group, consumer, entry_id]
        return bool(await self._run(self._extend(keys=[self._k(stream)], args=args)))

    async def _group_info(self, stream: str, group: str) -> dict[str, Any] | None:
        try:
            groups = await self.client.xinfo_groups(self._k(stream))
        except ResponseError:  # no such stream
            return None
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"Redis is unavailable: {err}") from err
        return next((g for g in groups if g["name"] == group), None)

    async def _after(self, stream: str, last_id: str) -> list[StreamEntry]:
        """Every entry after `last_id`, a page at a time."""
        out: list[StreamEntry] = []
        while True:
            page = await self._run(
                self.client.xrange(self._k(stream), min=f"({last_id}", max="+", count=_PAGE)
            )
            out += [(str(i), dict(f)) for i, f in page]
            if len(page) < _PAGE:
                return out
            last_id = str(page[-1][0])

    async def xbacklog(self, stream: str, group: str) -> list[StreamEntry]:
        info = await self._group_info(stream, group)
        if info is None:
            return []
        # Waiting entries are read first: one delivered meanwhile is then still pending below.
        waiting = await self._after(stream, str(info["last-delivered-id"]))
        pending: list[str] = []
        start = "-"
        while True:
            page = await self._run(
                self.client.xpending_range(self._k(stream), group, start, "+", count=_PAGE)
            )
            pending += [str(p["message_id"]) for p in page]
            if len(page) < _PAGE:
                break
            start = f"({pending[-1]}"
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id in pending:
                pipe.xrange(self._k(stream), min=entry_id, max=entry_id, count=1)
            replies = await self._run(pipe.execute()) if pending else []
        held = [(str(i), dict(f)) for reply in replies for i, f in reply]  # deleted: skipped
        return waiting + held

    async def xdel(self, stream: str, *ids: str) -> int:
        if not ids:
            return 0
        return int(await self._run(self.client.xdel(self._k(stream), *ids)))

    async def xlen(self, stream: str) -> int:
        return int(await self._run(self.client.xlen(self._k(stream))))

    async def xdepth(self, stream: str, group: str) -> tuple[int, int]:
        info = await self._group_info(stream, group)
        if info is None:
            return 0, 0
        lag = info.get("lag")
        if lag is None:  # Redis cannot tell after deletions: count them
            lag = len(await self._after(stream, str(info["last-delivered-id"])))
        return int(lag), int(info["pending"])

    async def close(self) -> None:
        await self.client.aclose()
