"""The pools one pool service runs, built from experts.yaml: admission by expert name.

Experts in no pool pass straight through.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from coe.errors import ConfigError
from coe.pool.controllers.base import PoolContext
from coe.pool.metrics import PoolMetrics
from coe.pool.pool import Pool, Priority
from coe.pool.registry import ControllerRegistry

if TYPE_CHECKING:
    from coe.experts.schema import CoeConfig

log = logging.getLogger(__name__)


class PoolSet:
    def __init__(self, pools: dict[str, Pool], metrics: PoolMetrics | None = None):
        self.pools = pools
        self.metrics = metrics or PoolMetrics()
        self._by_expert = {e: p for p in pools.values() for e in p.experts}

    def pool_of(self, expert: str) -> Pool | None:
        return self._by_expert.get(expert)

    def unavailable(self) -> set[str]:
        """Experts whose last swap failed: routers and fallback may skip them."""
        return {e for p in self.pools.values() for e in p.unavailable()}

    @asynccontextmanager
    async def admit(
        self, expert: str, priority: Priority = "online", sender: str | None = None
    ) -> AsyncIterator[None]:
        pool = self._by_expert.get(expert)
        if pool is None:
            yield
            return
        async with pool.admit(expert, priority, sender):
            yield

    async def start(self) -> None:
        started: list[Pool] = []
        try:
            for pool in self.pools.values():
                await pool.start()
                started.append(pool)
        except BaseException:
            for pool in started:
                await pool.close()
            raise

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()


def build_pools(
    config: CoeConfig,
    http: httpx.AsyncClient,
    metrics: PoolMetrics | None = None,
    *,
    base_dir: Path | None = None,
    controllers: ControllerRegistry | None = None,
    names: Collection[str] | None = None,
) -> PoolSet:
    """Pools and their controllers from the config; no I/O until `start()`.

    `names` picks the pools to build (default: all). Controller kinds come from
    `controllers`, else from the installed entry points and the config's `controllers_dirs`
    (relative to `base_dir`, the folder of experts.yaml).
    """
    metrics = metrics or PoolMetrics()
    unknown = sorted(set(names or ()) - set(config.pools))
    if unknown:
        known = ", ".join(sorted(config.pools)) or "none"
        raise ConfigError(f"no pool named {', '.join(unknown)} in the config (pools: {known})")
    chosen = {n: s for n, s in config.pools.items() if names is None or n in names}
    if not chosen:
        return PoolSet({}, metrics)
    controllers = controllers or ControllerRegistry.load(config.controllers_dirs, base_dir)
    pools: dict[str, Pool] = {}
    for name, spec in chosen.items():
        members = [e for e in config.experts if e.pool == name]
        if not members:
            controllers.resolve(name, spec)  # still refuse a typo in an unused pool
            log.warning("pool %s has no experts", name)
            continue
        controller = controllers.build(PoolContext(name, spec, members, http))
        pools[name] = Pool(
            name,
            controller,
            [e.name for e in members],
            spec.capacity,
            max_wait_s=spec.max_wait_s,
            retry_after_s=spec.retry_after_s,
            batch_linger_s=spec.batch_linger_s,
            metrics=metrics,
        )
    return PoolSet(pools, metrics)
