"""How the Redis clients are built: bounded waits, no hidden retries, a separate pool for
blocking stream reads. redis-py's own defaults (5 s socket timeout, ten retries with
backoff on timeouts) would turn a hung Redis into a minute-long stall per command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

if TYPE_CHECKING:
    from coe.config import Settings


@dataclass(frozen=True)
class RedisOptions:
    socket_timeout_s: float = 1.0  # one command's reply; blocking reads add their block time
    connect_timeout_s: float = 1.0
    breaker_failures: int = 3  # consecutive connection failures/timeouts that open the circuit
    breaker_cool_down_s: float = 2.0  # refused at once for this long, then one probe
    health_check_interval_s: int = 15  # idle connections are pinged before reuse

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisOptions:
        return cls(
            socket_timeout_s=settings.store_socket_timeout_s,
            connect_timeout_s=settings.store_connect_timeout_s,
            breaker_failures=settings.store_breaker_failures,
            breaker_cool_down_s=settings.store_breaker_cool_down_s,
        )


def _retry() -> Retry:
    # One immediate retry on a refused or reset connection: that is a pooled connection
    # Redis dropped while it was idle (a restart), where the command never ran. Never on a
    # timeout: the command may have run (INCR, XADD are not idempotent), and a hung Redis
    # would cost another full timeout.
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def command_client(url: str, options: RedisOptions) -> aioredis.Redis:
    """For every command but blocking reads: each reply within `socket_timeout_s`."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=options.socket_timeout_s,
        socket_connect_timeout=options.connect_timeout_s,
        health_check_interval=options.health_check_interval_s,
        retry=_retry(),
    )


def blocking_client(url: str, options: RedisOptions) -> aioredis.Redis:
    """For XREADGROUP BLOCK: no socket timeout of its own (the store bounds each read by
    its block time plus `socket_timeout_s`), so a quiet stream is not mistaken for a hang."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=options.connect_timeout_s,
        health_check_interval=options.health_check_interval_s,
        retry=_retry(),
    )
