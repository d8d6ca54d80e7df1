"""Chat API keys: created by operators, stored hashed, each with a requests-per-minute limit.

Lookups are served from a local cache so chat keeps authenticating while the
store is down; rate-limit counters live in the store (shared by every replica)
and fail open with a warning when it is unreachable.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
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
    def __init__(self, store: Store):
        self.store = store
        self._by_hash: dict[str, ApiKey] = {}

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
        self._by_hash[record.hash] = record
        return record, secret

    async def list(self) -> list[ApiKey]:
        raw = await self.store.hgetall(keys.API_KEYS)
        records = [ApiKey(**json.loads(v)) for v in raw.values()]
        self._by_hash = {r.hash: r for r in records}
        return sorted(records, key=lambda r: r.created)

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
        except StoreUnavailable:
            cached = self._by_hash.get(digest)
            if cached is None:
                raise
            log.warning("store unavailable; authenticated key %s from the local cache", cached.id)
            return cached
        if raw is None:
            self._by_hash.pop(digest, None)
            raise Unauthorized("Invalid API key")
        record = ApiKey(**json.loads(raw))
        self._by_hash[digest] = record
        return record

    async def check_rate(self, record: ApiKey) -> None:
        window = int(time.time() // 60)
        try:
            used = await self.store.incr(keys.rate_limit(record.id, window), ttl_s=61)
        except StoreUnavailable as err:
            log.warning("store unavailable; not rate limiting key %s: %s", record.id, err.message)
            return
        if used > record.rate_limit_rpm:
            retry = 60 - int(time.time()) % 60
            raise RateLimited(
                f"Rate limit of {record.rate_limit_rpm} requests per minute reached for key "
                f"{record.name!r}; retry in {retry} s",
                retry_after_s=retry,
            )

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
            log.warning("store unavailable; not rate limiting key %s: %s", record.id, err.message)
            return
        retry = 60 - int(time.time()) % 60
        raise RateLimited(
            f"Rate limit of {record.rate_limit_rpm} requests per minute reached for key "
            f"{record.name!r}: {what} counts as {amount} requests and "
            f"the key has {max(record.rate_limit_rpm - (used - extra), 0)} left this minute; "
            f"retry in {retry} s",
            retry_after_s=retry,
        )
