"""All experts resident all the time: the pool only queues and counts, never swaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from coe.errors import ConfigError
from coe.pool.config import PoolSpec
from coe.pool.controllers.base import SwapController

if TYPE_CHECKING:
    from coe.experts.schema import ExpertSpec


class StaticController(SwapController):
    kind = "static"

    def __init__(self, experts: Sequence[str]):
        self.experts = list(experts)

    @classmethod
    def from_spec(
        cls, spec: PoolSpec, experts: Sequence[ExpertSpec], http: httpx.AsyncClient
    ) -> StaticController:
        if spec.capacity < len(experts):
            raise ConfigError(
                f"a static pool holds every expert: capacity {spec.capacity} < {len(experts)}"
            )
        return cls([e.name for e in experts])

    async def start(self) -> set[str]:
        return set(self.experts)

    async def load(self, expert: str) -> None:
        return None

    async def unload(self, expert: str) -> None:
        return None
