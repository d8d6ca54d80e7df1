"""Chat API keys: created by operators, stored hashed, each with a requests-per-minute limit.

Lookups are served from a bounded local cache (least recently used out) so chat keeps
authenticating while the store is down; rate-limit counters live in the store (shared by
every replica) and fail open when it is unreachable (at no cost while the store's circuit
breaker is open). Each outage is logged once, not per request.

When the store answers but holds no keys at all (Redis lost its data), keys this replica
knew before keep working from the cache for `wipe_grace_s`, counted from when it first saw
the empty store, so chat survives the wipe while operators recreate keys. Keys are not
written back from memory: a replica's cache may still hold a key revoked elsewhere, and
the store stays the only authority on which keys exist. A store holding any key ends the
grace at once: a key missing from it is unknown (revoked), whatever the cache says.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass

from coe.errors import NotFound, RateLimited, StoreUnavailable, Unauthorized
from coe.security.tokens import key_hash, new_secret
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    rate_limit_rpm: int
    created: int
    hash: str

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "rate_limit_rpm": self.rate_limit_rpm,
            "created": self.created,
        }


class ApiKeyStore:
    def __init__(self, store: Store, cache_size: int = 10_000, wipe_grace_s: float = 900.0):
        self.store = store
        self.cache_size = cache_size
        self.wipe_grace_s = wipe_grace_s
        self._by_hash: OrderedDict[str, ApiKey] = OrderedDict()
        self._empty_since: float | None = None  # when this replica first saw no keys stored
        self._store_down = False  # an outage is logged when it starts and when it ends
        self._limits_down = False

    def _remember(self, record: ApiKey) -> None:
        self._by_hash[record.hash] = record
        self._by_hash.move_to_end(record.hash)
        while len(self._by_hash) > self.cache_size:
            self._by_hash.popitem(last=False)

    def _cached(self, digest: str) -> ApiKey | None:
        record = self._by_hash.get(digest)
        if record is not None:
            self._by_hash.move_to_end(digest)
        return record

    async def create(self, name: str, rate_limit_rpm: int) -> tuple[ApiKey, str]:
        """Returns the record and the secret; the secret is never stored or shown again."""
        secret = new_secret()
        record = ApiKey(
            id=f"key-{uuid.uuid4().hex[:12]}",
            name=name,
            rate_limit_rpm=rate_limit_rpm,
            created=int(time.time()),
            hash=key_hash(secret),
        )
        await self.store.hset(keys.API_KEYS, {record.hash: json.dumps(asdict(record))})
        await self.store.publish(keys.API_KEYS_CHANNEL, record.id)
        self._remember(record)
        return record, secret

    async def list(self) -> list[ApiKey]:
        raw = await self.store.hgetall(keys.API_KEYS)
        records = sorted((ApiKey(**json.loads(v)) for v in raw.values()), key=lambda r: r.created)
        # The store is the authority: what it no longer holds (revoked) leaves the cache.
        self._by_hash = OrderedDict()
        for record in records[-self.cache_size :]:  # the newest when they do not all fit
            self._remember(record)
        return records

    async def revoke(self, key_id: str) -> None:
        for record in await self.list():
            if record.id == key_id:
                await self.store.hdel(keys.API_KEYS, record.hash)
                await self.store.publish(keys.API_KEYS_CHANNEL, record.id)
                self._by_hash.pop(record.hash, None)
                return
        raise NotFound(f"no API key with id {key_id!r}")

    async def refresh(self) -> None:
        await self.list()

    async def authenticate(self, secret: str | None) -> ApiKey:
        if not secret:
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`")
        digest = key_hash(secret)
        try:
            raw = await self.store.hget(keys.API_KEYS, digest)
            if raw is None:
                return await self._not_stored(digest)
        except StoreUnavailable as err:
            cached = self._cached(digest)
            if cached is None:
                raise
            if not self._store_down:
                log.warning(
                    "store unavailable; authenticating known API keys from the local cache "
                    "until it is back: %s",
                    err.message,
                )
                self._store_down = True
            return cached
        if self._store_down:
            log.info("store reachable again; API keys are checked against it")
            self._store_down = False
        self._empty_since = None
        record = ApiKey(**json.loads(raw))
        self._remember(record)
        return record

    async def _not_stored(self, digest: str) -> ApiKey:
        """A key the store does not hold: unknown, unless the store lost every key lately
        and this replica knew it (see the module docstring)."""
        if await self.store.hlen(keys.API_KEYS) > 0:
            self._empty_since = None
            self._by_hash.pop(digest, None)
            raise Unauthorized("Invalid API key")
        now = time.monotonic()
        if self._empty_since is None:
            self._empty_since = now
            log.warning(
                "the store holds no API keys (Redis lost its data?); keys this replica knew "
                "keep working for %.0f s: recreate them with POST /admin/keys",
                self.wipe_grace_s,
            )
        cached = self._cached(digest)
        if cached is None or now - self._empty_since >= self.wipe_grace_s:
            raise Unauthorized("Invalid API key")
        return cached

    async def check_rate(self, record: ApiKey) -> None:
        window = int(time.time() // 60)
        try:
            used = await self.store.incr(keys.rate_limit(record.id, window), ttl_s=61)
        except StoreUnavailable as err:
            self._limits_unavailable(err)
            return
        self._limits_available()
        if used > record.rate_limit_rpm:
            retry = 60 - int(time.time()) % 60
            raise RateLimited(
                f"Rate limit of {record.rate_limit_rpm} requests per minute reached for key "
                f"{record.name!r}; retry in {retry} s",
                retry_after_s=retry,
            )

    def _limits_unavailable(self, err: StoreUnavailable) -> None:
        if not self._limits_down:
            log.warning("store unavailable; not rate limiting until it is back: %s", err.message)
            self._limits_down = True

    def _limits_available(self) -> None:
        if self._limits_down:
            log.info("store reachable again; rate limits apply")
            self._limits_down = False

    async def spend(self, record: ApiKey, amount: int, what: str, counted: int = 0) -> None:
        """Charge `amount` requests at once (`what`, e.g. a batch's lines; `counted` of them
        already charged): refused whole, with nothing spent, when they do not fit this
        minute's budget; refused outright when they exceed the whole per-minute limit."""
        if amount > record.rate_limit_rpm:
            raise RateLimited(
                f"{what} counts as {amount} requests, more than the limit of "
                f"{record.rate_limit_rpm} requests per minute of key {record.name!r}; "
                "split it into smaller batches or raise the key's limit",
                retry_after_s=60,
            )
        extra = amount - counted
        if extra <= 0:
            return
        key = keys.rate_limit(record.id, int(time.time() // 60))
        try:
            used = await self.store.incr(key, extra, ttl_s=61)
            if used <= record.rate_limit_rpm:
                return
            await self.store.incr(key, -extra)
        except StoreUnavailable as err:
            self._limits_unavailable(err)
            return
        retry = 60 - int(time.time()) % 60
        raise RateLimited(
            f"Rate limit of {record.rate_limit_rpm} requests per minute reached for key "
            f"{record.name!r}: {what} counts as {amount} requests and "
            f"the key has {max(record.rate_limit_rpm - (used - extra), 0)} left this minute; "
            f"retry in {retry} s",
            retry_after_s=retry,
        )
