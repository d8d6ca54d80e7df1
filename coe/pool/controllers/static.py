"""All experts resident all the time: the pool only queues and counts, never swaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coe.errors import ConfigError
from coe.pool.controllers.base import PoolContext, SwapController


class StaticController(SwapController):
    kind = "static"

    def __init__(self, experts: Sequence[str]):
        self.experts = list(experts)

    @classmethod
    def from_config(cls, params: Any, pool: PoolContext) -> StaticController:
        if pool.spec.capacity < len(pool.experts):
            raise ConfigError(
                f"pools.{pool.name}: a static pool holds every expert: "
                f"capacity {pool.spec.capacity} < {len(pool.experts)}"
            )
        return cls([e.name for e in pool.experts])

    async def start(self) -> set[str]:
        return set(self.experts)

    async def load(self, expert: str) -> None:
        return None

    async def unload(self, expert: str) -> None:
        return None
