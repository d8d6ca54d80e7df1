"""A pool of experts sharing one device: at most C resident, per-expert queues, one swap at a time.

Requests for a resident expert go straight through; the others queue. When a place is
needed, the scheduler swaps in the expert with the most waiting requests (the oldest
first once any has waited `max_wait_s`), evicting an idle resident, or draining one
when a request would otherwise starve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from coe.errors import ConfigError, ExpertUnavailable
from coe.pool.controllers.base import OCCUPYING, ExpertState, SwapController
from coe.pool.metrics import PoolMetrics

log = logging.getLogger(__name__)

Observer = Callable[["Pool", str, ExpertState], None]


@dataclass
class _Waiter:
    future: asyncio.Future[None]
    since: float


@dataclass
class _Expert:
    state: ExpertState
    waiters: deque[_Waiter] = field(default_factory=deque)
    active: int = 0
    draining: bool = False
    last_used: float = 0.0
    retry_at: float = 0.0


class Pool:
    def __init__(
        self,
        name: str,
        controller: SwapController,
        experts: Sequence[str],
        capacity: int,
        max_wait_s: float = 30.0,
        retry_after_s: float = 30.0,
        metrics: PoolMetrics | None = None,
        observer: Observer | None = None,
    ):
        limit = controller.max_capacity
        if limit is not None and capacity > limit:
            raise ConfigError(
                f"pool {name}: capacity {capacity} exceeds what its {controller.kind} "
                f"controller can hold ({limit})"
            )
        self.name = name
        self.controller = controller
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics or PoolMetrics()
        self.observer = observer
        self._experts = {e: _Expert(controller.unloaded_state) for e in experts}
        self._wake_event = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._swap: asyncio.Task[None] | None = None

    # -- state ----------------------------------------------------------------------------
    @property
    def experts(self) -> list[str]:
        return list(self._experts)

    def state(self, expert: str) -> ExpertState:
        return self._get(expert).state

    def states(self) -> dict[str, ExpertState]:
        return {name: e.state for name, e in self._experts.items()}

    def resident(self) -> list[str]:
        return [n for n, e in self._experts.items() if e.state is ExpertState.RESIDENT]

    def occupied(self) -> int:
        return sum(1 for e in self._experts.values() if e.state in OCCUPYING)

    def unavailable(self) -> set[str]:
        return {n for n, e in self._experts.items() if e.state is ExpertState.UNAVAILABLE}

    def queue_depth(self, expert: str) -> int:
        return len(self._get(expert).waiters)

    def _get(self, expert: str) -> _Expert:
        slot = self._experts.get(expert)
        if slot is None:
            raise ConfigError(f"expert {expert!r} is not in pool {self.name}")
        return slot

    def _set(self, expert: str, state: ExpertState) -> None:
        self._experts[expert].state = state
        assert self.occupied() <= self.capacity, f"pool {self.name} over capacity"
        log.info("pool %s: %s is %s", self.name, expert, state.value)
        if self.observer is not None:
            self.observer(self, expert, state)

    # -- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Learn who is resident already, trim to C, and start scheduling."""
        resident = await self.controller.start()
        for name in sorted(resident & set(self._experts)):
            if self.occupied() < self.capacity:
                self._set(name, ExpertState.RESIDENT)
            else:
                await self.controller.unload(name)
        self._scheduler = asyncio.create_task(self._run(), name=f"pool-{self.name}")

    async def close(self) -> None:
        for task in (self._scheduler, self._swap):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        for name, slot in self._experts.items():
            self._fail_waiters(name, slot, ExpertUnavailable(f"pool {self.name} closed"))
        await self.controller.close()

    # -- admission ------------------------------------------------------------------------
    @asynccontextmanager
    async def admit(self, expert: str) -> AsyncIterator[None]:
        """Hold the expert resident for the duration of one call; queue until it is."""
        slot = self._get(expert)
        now = time.monotonic()
        if slot.state is ExpertState.UNAVAILABLE and now < slot.retry_at:
            raise ExpertUnavailable(
                f"expert {expert} is unavailable in pool {self.name} "
                f"(retry in {slot.retry_at - now:.0f} s)",
                expert=expert,
            )
        if slot.state is ExpertState.RESIDENT and not slot.draining and not slot.waiters:
            slot.active += 1
            self.metrics.waited(self.name, expert, 0.0)
        else:
            await self._queue(expert, slot, now)
        try:
            yield
        finally:
            slot.active -= 1
            slot.last_used = time.monotonic()
            self._wake()

    async def _queue(self, expert: str, slot: _Expert, now: float) -> None:
        waiter = _Waiter(asyncio.get_running_loop().create_future(), now)
        slot.waiters.append(waiter)
        self.metrics.depth(self.name, expert, len(slot.waiters))
        self._wake()
        try:
            await waiter.future
        except BaseException:
            if waiter in slot.waiters:
                slot.waiters.remove(waiter)
                self.metrics.depth(self.name, expert, len(slot.waiters))
            elif waiter.future.done() and not waiter.future.cancelled():
                if waiter.future.exception() is None:
                    slot.active -= 1  # granted, then cancelled before the call began
            self._wake()
            raise
        self.metrics.waited(self.name, expert, time.monotonic() - now)

    # -- scheduling -----------------------------------------------------------------------
    def _wake(self) -> None:
        self._wake_event.set()

    async def _run(self) -> None:
        while True:
            timeout = self._schedule()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake_event.wait()
            self._wake_event.clear()

    def _schedule(self) -> float | None:
        """One pass: grant, recover, maybe start a swap. Returns when to look again."""
        now = time.monotonic()
        for name, slot in self._experts.items():
            if slot.state is ExpertState.RESIDENT and not slot.draining:
                self._grant(name, slot)
            elif slot.state is ExpertState.UNAVAILABLE and now >= slot.retry_at:
                self._set(name, self.controller.unloaded_state)
        if self._swap is None:
            self._plan_swap(now)
        deadlines = [
            s.waiters[0].since + self.max_wait_s
            for s in self._experts.values()
            if s.waiters and s.state is not ExpertState.RESIDENT
        ]
        deadlines += [
            s.retry_at for s in self._experts.values() if s.state is ExpertState.UNAVAILABLE
        ]
        return max(0.01, min(deadlines) - now) if deadlines else None

    def _grant(self, name: str, slot: _Expert) -> None:
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.future.done():
                slot.active += 1
                waiter.future.set_result(None)
        self.metrics.depth(self.name, name, 0)

    def _pick(self, now: float) -> str | None:
        """The expert to swap in: the most waiting work, or the oldest once one starves."""
        waiting = [
            (name, s)
            for name, s in self._experts.items()
            if s.waiters and s.state not in OCCUPYING and s.state is not ExpertState.UNAVAILABLE
        ]
        if not waiting:
            return None
        starving = [(n, s) for n, s in waiting if now - s.waiters[0].since >= self.max_wait_s]
        if starving:
            return min(starving, key=lambda ns: ns[1].waiters[0].since)[0]
        return max(waiting, key=lambda ns: (len(ns[1].waiters), -ns[1].waiters[0].since))[0]

    def _plan_swap(self, now: float) -> None:
        target = self._pick(now)
        if target is None:
            for slot in self._experts.values():
                slot.draining = False  # nobody needs the place any more
            return
        if self.occupied() < self.capacity:
            self._start_swap(None, target)
            return
        residents = [(n, s) for n, s in self._experts.items() if s.state is ExpertState.RESIDENT]
        idle = [(n, s) for n, s in residents if s.active == 0 and not s.waiters]
        draining = [(n, s) for n, s in residents if s.draining]
        if draining:
            name, slot = draining[0]
            if slot.active == 0:
                self._start_swap(name, target)
        elif idle:
            self._start_swap(min(idle, key=lambda ns: ns[1].last_used)[0], target)
        elif now - self._experts[target].waiters[0].since >= self.max_wait_s and residents:
            # Starvation bound: stop admitting to the least busy resident, swap once it drains.
            name, slot = min(residents, key=lambda ns: (ns[1].active, ns[1].last_used))
            slot.draining = True
            log.info(
                "pool %s: draining %s for %s (waited %.1f s)",
                self.name,
                name,
                target,
                now - self._experts[target].waiters[0].since,
            )
            if slot.active == 0:
                self._start_swap(name, target)

    def _start_swap(self, victim: str | None, target: str) -> None:
        self._swap = asyncio.create_task(self._do_swap(victim, target))

    async def _do_swap(self, victim: str | None, target: str) -> None:
        try:
            if victim is not None and not await self._transition(victim, load=False):
                return
            await self._transition(target, load=True)
        finally:
            self._swap = None
            self._wake()

    async def _transition(self, expert: str, load: bool) -> bool:
        """Load or unload one expert; a failure marks it unavailable and fails its queue."""
        slot = self._experts[expert]
        slot.draining = False
        self._set(expert, ExpertState.LOADING if load else ExpertState.UNLOADING)
        started = time.monotonic()
        try:
            if load:
                await self.controller.load(expert)
            else:
                await self.controller.unload(expert)
        except asyncio.CancelledError:
            self._set(expert, ExpertState.UNAVAILABLE)
            raise
        # The pool must outlive any controller failure: record it, hand it to the waiters.
        except Exception as err:
            log.error(
                "pool %s: %s of %s failed: %s",
                self.name,
                "load" if load else "unload",
                expert,
                err,
                exc_info=err,
            )
            self.metrics.failed(self.name, expert)
            slot.retry_at = time.monotonic() + self.retry_after_s
            self._set(expert, ExpertState.UNAVAILABLE)
            failure = ExpertUnavailable(
                f"pool {self.name} could not {'load' if load else 'unload'} expert {expert}: {err}",
                expert=expert,
            )
            failure.__cause__ = err
            self._fail_waiters(expert, slot, failure)
            return False
        seconds = time.monotonic() - started
        if load:
            self.metrics.swapped_in(self.name, expert, seconds)
            self._set(expert, ExpertState.RESIDENT)
            self._grant(expert, slot)
        else:
            self.metrics.swapped_out(self.name, expert, seconds)
            self._set(expert, self.controller.unloaded_state)
        log.info(
            "pool %s: %s %s in %.2f s", self.name, "loaded" if load else "unloaded", expert, seconds
        )
        return True

    def _fail_waiters(self, name: str, slot: _Expert, err: ExpertUnavailable) -> None:
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(err)
        self.metrics.depth(self.name, name, 0)
