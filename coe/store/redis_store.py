"""The shared store on Redis (redis-py asyncio); every key carries the prefix.

Every call goes through a circuit breaker (coe/store/breaker.py): while Redis is down or
hung, calls fail fast with StoreUnavailable instead of each waiting for a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coe.errors import StoreUnavailable
from coe.store.base import Store, StreamEntry
from coe.store.breaker import CircuitBreaker
from coe.store.redis_client import RedisOptions, blocking_client, command_client

# XCLAIM JUSTID resets an entry's idle time without counting a delivery; checking the owner
# in the same script keeps a worker from taking back a unit another worker has reclaimed.
_EXTEND = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""
# Acknowledged entries lie below the group's oldest pending entry, or (none pending) at or
# below its last-delivered id; XTRIM MINID drops exactly those, in one atomic step.
_TRIM_ACKED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  if t['name'] == ARGV[1] then last = t['last-delivered-id'] end
end
if last == nil then return 0 end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local min_id
if tonumber(summary[1]) > 0 then
  min_id = summary[2]
else
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  min_id = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', min_id)
"""
_PAGE = 1000
# The connection failed or the reply did not come in time: what the breaker counts.
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisStore(Store):
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "coe:",
        options: RedisOptions | None = None,
        blocking: aioredis.Redis | None = None,
    ):
        self.client = client
        self.prefix = prefix
        self.options = options or RedisOptions()
        self.breaker = CircuitBreaker(
            failures=self.options.breaker_failures, cool_down_s=self.options.breaker_cool_down_s
        )
        self._blocking = blocking  # XREADGROUP BLOCK; without one, the command client
        self._extend = client.register_script(_EXTEND)
        self._trim_acked = client.register_script(_TRIM_ACKED)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "coe:", options: RedisOptions | None = None
    ) -> RedisStore:
        options = options or RedisOptions()
        return cls(
            command_client(url, options),
            prefix=prefix,
            options=options,
            blocking=blocking_client(url, options),
        )

    def circuit_open(self) -> bool:
        return self.breaker.is_open

    def _k(self, key: str) -> str:
        return self.prefix + key

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Report the outcome of the calls inside to the breaker; Redis errors become
        StoreUnavailable. The caller has already been let through by `breaker.allow()`."""
        try:
            yield
        except _DOWN as err:
            self.breaker.failed(err)
            raise StoreUnavailable(f"Redis is unavailable: {err}") from err
        except RedisError as err:  # Redis answered, with an error
            self.breaker.succeeded()
            raise StoreUnavailable(f"Redis is unavailable: {err}") from err
        except StoreUnavailable:  # raised inside on an answer it does not accept
            self.breaker.succeeded()
            raise
        except BaseException:
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()

    async def _run(self, coro: Any) -> Any:
        try:
            self.breaker.allow()
        except StoreUnavailable:
            coro.close()  # never awaited: no warning, no command sent
            raise
        with self._guard():
            return await coro

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
        self.breaker.allow()
        with self._guard():
            async for k in self.client.scan_iter(match=match, count=500):
                out.append(k[len(self.prefix) :])
        return sorted(out)

    async def publish(self, channel: str, message: str) -> None:
        await self._run(self.client.publish(self._k(channel), message))

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._run(pubsub.subscribe(self._k(channel)))
            # A blocking read with no timeout (redis-py >= 8.1 reads pub/sub with math.inf);
            # a lost connection ends it with an error, and the follower resubscribes.
            with self._guard():
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        yield str(msg["data"])
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
        self.breaker.allow()
        with self._guard():
            try:
                await self.client.xgroup_create(self._k(stream), group, id="0", mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise StoreUnavailable(f"Redis refused to create group {group}: {err}") from err

    async def xreadgroup(
        self, stream: str, group: str, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[StreamEntry]:
        # BLOCK 0 would wait forever in Redis; like the embedded store, 0 means "do not wait".
        block = block_ms if block_ms > 0 else None
        limit = max(block_ms, 0) / 1000 + self.options.socket_timeout_s
        client = self._blocking or self.client

        async def read() -> Any:
            streams: dict[Any, Any] = {self._k(stream): ">"}
            call = client.xreadgroup(group, consumer, streams, count=count, block=block)
            return await asyncio.wait_for(call, timeout=limit)

        reply = await self._run(read())
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
        self.breaker.allow()
        with self._guard():
            try:
                groups = await self.client.xinfo_groups(self._k(stream))
            except ResponseError:  # no such stream
                return None
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

    async def xtrim_acknowledged(self, stream: str, group: str) -> int:
        return int(await self._run(self._trim_acked(keys=[self._k(stream)], args=[group])))

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
        if self._blocking is not None:
            await self._blocking.aclose()
