"""A controller that records swaps and takes a little time, to test the scheduler alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from coe.errors import UpstreamError
from coe.pool import ExpertState, Pool, PoolContext, SwapController


class FakeController(SwapController):
    kind = "fake"

    def __init__(self, delay_s: float = 0.05, resident: Sequence[str] = ()):
        self.delay_s = delay_s
        self.initially = set(resident)
        self.loaded: set[str] = set()
        self.peak = 0  # the most experts loaded at once, as the device would see it
        self.log: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self.fail_unload: set[str] = set()  # unload raises and the expert stays loaded
        self.unload_lost: set[str] = set()  # unload raises although the expert is gone
        self.blind = False  # resident() fails: the backend cannot be asked

    @classmethod
    def from_config(cls, params: Any, pool: PoolContext) -> FakeController:
        return cls()

    async def start(self) -> set[str]:
        self.loaded = set(self.initially)
        return set(self.initially)

    async def load(self, expert: str) -> None:
        self.log.append(("load", expert))
        await asyncio.sleep(self.delay_s)
        if expert in self.fail:
            raise UpstreamError(f"fake load of {expert} failed", expert=expert)
        self.loaded.add(expert)
        self.peak = max(self.peak, len(self.loaded))

    async def unload(self, expert: str) -> None:
        self.log.append(("unload", expert))
        await asyncio.sleep(self.delay_s)
        if expert in self.fail_unload:
            raise UpstreamError(f"fake unload of {expert} failed", expert=expert)
        self.loaded.discard(expert)
        if expert in self.unload_lost:
            raise UpstreamError(f"fake unload of {expert} timed out", expert=expert)

    async def resident(self) -> set[str]:
        if self.blind:
            raise UpstreamError("fake backend does not answer")
        return set(self.loaded)

    def upstream(self, expert: str) -> str:
        return f"http://{expert}.test"

    def loads(self) -> list[str]:
        return [e for op, e in self.log if op == "load"]


def checked_pool(
    controller: SwapController, experts: Sequence[str], capacity: int, **kw: float
) -> Pool:
    """A pool whose every transition asserts the capacity bound, also on the controller's side."""

    def observe(pool: Pool, expert: str, state: ExpertState) -> None:
        assert pool.occupied() <= pool.capacity
        if isinstance(controller, FakeController):
            assert len(controller.loaded) <= pool.capacity

    return Pool("test", controller, experts, capacity, observer=observe, **kw)
