"""All experts resident all the time: the pool only queues and counts, never swaps."""

from __future__ import annotations

from pydantic import Field

from coe.errors import ConfigError
from coe.pool.controllers.base import ControllerParams, PoolContext, SwapController


class StaticParams(ControllerParams):
    upstreams: dict[str, str] = Field(
        description="expert name -> base URL of the server that serves it"
    )


class StaticController(SwapController):
    kind = "static"
    servers_param = "upstreams"
    Params = StaticParams

    def __init__(self, upstreams: dict[str, str]):
        self.upstreams = {e: url.rstrip("/") for e, url in upstreams.items()}

    @classmethod
    def from_config(cls, params: StaticParams, pool: PoolContext) -> StaticController:
        if pool.spec.capacity < len(pool.experts):
            raise ConfigError(
                f"pools.{pool.name}: a static pool holds every expert: "
                f"capacity {pool.spec.capacity} < {len(pool.experts)}"
            )
        missing = sorted({e.name for e in pool.experts} - set(params.upstreams))
        if missing:
            raise ConfigError(
                f"pools.{pool.name}.params.upstreams: no upstream for {', '.join(missing)}"
            )
        return cls({e.name: params.upstreams[e.name] for e in pool.experts})

    async def resident(self) -> set[str]:
        return set(self.upstreams)

    def upstream(self, expert: str) -> str:
        return self.upstreams[expert]

    async def load(self, expert: str) -> None:
        return None

    async def unload(self, expert: str) -> None:
        return None
