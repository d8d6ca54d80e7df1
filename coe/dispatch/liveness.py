"""Which pooled experts can be routed to now: each pool service's published state, cached.

Gateways and workers hold no pools; the pool service of each device does. Routing skips an
expert its pool reports unavailable (its last swap failed), and every expert of a pool
service that cannot be reached, so requests go to experts that can answer. The state is
polled every `state_ttl_s` in the background; a request never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import httpx

from coe.experts.schema import CoeConfig, PoolSpec
from coe.security.redact import redact_text, redact_url

log = logging.getLogger(__name__)


class PoolStates:
    def __init__(self, http: httpx.AsyncClient, config: CoeConfig):
        self.http = http
        self.pools: dict[str, PoolSpec] = dict(config.pools)
        self.members = {
            name: [e.name for e in config.experts if e.pool == name] for name in self.pools
        }
        self._down: dict[str, set[str]] = {name: set() for name in self.pools}
        self._states: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def unavailable(self) -> set[str]:
        return set().union(*self._down.values()) if self._down else set()

    def states(self) -> Mapping[str, dict[str, Any]]:
        """The last state each pool service published (for the admin API and the console)."""
        return dict(self._states)

    async def start(self) -> None:
        """One refresh of every pool now (a pool service that is down is only logged), then
        keep each fresh in the background."""
        await asyncio.gather(*(self.refresh(name) for name in self.pools))
        self._tasks = [
            asyncio.create_task(self._follow(name), name=f"pool-state-{name}")
            for name in self.pools
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def refresh(self, pool: str) -> None:
        spec = self.pools[pool]
        url = f"{spec.service_url}/pool/state"
        try:
            resp = await self.http.get(url, timeout=max(1.0, spec.state_ttl_s * 2))
            resp.raise_for_status()
            state = resp.json()["pools"][pool]
            experts = state["experts"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            if self._down[pool] != set(self.members[pool]):
                log.warning(
                    "pool service %s for pool %s unreachable (%s: %s); routing around its "
                    "experts until it answers",
                    redact_url(spec.service_url),
                    pool,
                    type(err).__name__,
                    redact_text(str(err)),
                )
            self._down[pool] = set(self.members[pool])
            self._states.pop(pool, None)
            return
        down = {name for name, e in experts.items() if e.get("state") == "unavailable"}
        if down != self._down[pool]:
            log.info("pool %s: unavailable now: %s", pool, ", ".join(sorted(down)) or "none")
        self._down[pool] = down
        self._states[pool] = state

    async def _follow(self, pool: str) -> None:
        every = self.pools[pool].state_ttl_s
        while True:
            await asyncio.sleep(every)
            await self.refresh(pool)
