"""A pool of experts sharing one device: at most C resident, per-expert queues, one swap at a time.

Requests for a resident expert go straight through; the others queue. When a place is
needed, the scheduler swaps in the expert with the most waiting requests (the oldest
first once an online request has waited `max_wait_s`), evicting an idle resident, or
draining one when an online request would otherwise starve. Batch requests never force a
swap, and an expert serving batch work lingers `batch_linger_s` for its next unit, so
several batch workers do not make the pool alternate. A failed swap keeps the expert's
place until the controller confirms the model is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

from coe.errors import ConfigError, ExpertUnavailable
from coe.pool.controllers.base import OCCUPYING, ExpertState, SwapController
from coe.pool.metrics import PoolMetrics

log = logging.getLogger(__name__)

Observer = Callable[["Pool", str, ExpertState], None]
Priority = Literal["online", "batch"]


@dataclass
class _Waiter:
    future: asyncio.Future[None]
    since: float
    online: bool = True
    sender: str | None = None  # which batch worker sent it, when it said


@dataclass
class _Expert:
    state: ExpertState
    waiters: deque[_Waiter] = field(default_factory=deque)
    active: int = 0
    draining: bool = False
    last_used: float = 0.0
    last_batch: float = float("-inf")  # when it last finished a batch call
    batch_senders: dict[str | None, float] = field(default_factory=dict)  # sender -> last call
    retry_at: float = 0.0
    holds_place: bool = False  # unavailable, but the device may still hold it

    def oldest_online(self) -> float | None:
        return next((w.since for w in self.waiters if w.online), None)


class Pool:
    def __init__(
        self,
        name: str,
        controller: SwapController,
        experts: Sequence[str],
        capacity: int,
        max_wait_s: float = 30.0,
        retry_after_s: float = 30.0,
        batch_linger_s: float = 2.0,
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
        self.batch_linger_s = batch_linger_s
        self.metrics = metrics or PoolMetrics()
        self.observer = observer
        self._experts = {e: _Expert(controller.unloaded_state) for e in experts}
        for expert in experts:
            self.metrics.state(name, expert, controller.unloaded_state)
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
        """Places taken: loading, resident, unloading, and failed swaps not yet confirmed gone."""
        return sum(
            1
            for e in self._experts.values()
            if e.state in OCCUPYING or (e.state is ExpertState.UNAVAILABLE and e.holds_place)
        )

    def unavailable(self) -> set[str]:
        return {n for n, e in self._experts.items() if e.state is ExpertState.UNAVAILABLE}

    def queue_depth(self, expert: str) -> int:
        return len(self._get(expert).waiters)

    def active(self, expert: str) -> int:
        """Calls admitted to the expert and not finished."""
        return self._get(expert).active

    def retry_in(self, expert: str) -> float | None:
        """Seconds until an unavailable expert is tried again; None when it is not unavailable."""
        slot = self._get(expert)
        if slot.state is not ExpertState.UNAVAILABLE:
            return None
        return max(0.0, slot.retry_at - time.monotonic())

    def _get(self, expert: str) -> _Expert:
        slot = self._experts.get(expert)
        if slot is None:
            raise ConfigError(f"expert {expert!r} is not in pool {self.name}")
        return slot

    def _set(self, expert: str, state: ExpertState) -> None:
        self._experts[expert].state = state
        assert self.occupied() <= self.capacity, f"pool {self.name} over capacity"
        log.info("pool %s: %s is %s", self.name, expert, state.value)
        self.metrics.state(self.name, expert, state)
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
    async def admit(
        self, expert: str, priority: Priority = "online", sender: str | None = None
    ) -> AsyncIterator[None]:
        """Hold the expert resident for the duration of one call; queue until it is.

        `batch` calls never force a swap (no starvation drain), and keep their expert
        resident `batch_linger_s` after they finish while only batch work waits elsewhere —
        unless every `sender` that used it since has moved on to wait for another expert.
        """
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
            await self._queue(expert, slot, now, online=priority != "batch", sender=sender)
        try:
            yield
        finally:
            slot.active -= 1
            slot.last_used = time.monotonic()
            if priority == "batch":
                slot.last_batch = slot.last_used
                slot.batch_senders[sender] = slot.last_used
            self._wake()

    async def _queue(
        self, expert: str, slot: _Expert, now: float, online: bool, sender: str | None = None
    ) -> None:
        waiter = _Waiter(asyncio.get_running_loop().create_future(), now, online, sender)
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
        reclaim: str | None = None
        for name, slot in self._experts.items():
            if slot.state is ExpertState.RESIDENT and not slot.draining:
                self._grant(name, slot)
            elif slot.state is ExpertState.UNAVAILABLE and now >= slot.retry_at:
                if not slot.holds_place:
                    self._set(name, self.controller.unloaded_state)
                elif reclaim is None:
                    reclaim = name
        deadlines: list[float] = []
        if self._swap is None:
            if reclaim is not None:
                self._swap = asyncio.create_task(self._reclaim(reclaim))
            else:
                deadlines += self._plan_swap(now)
        for s in self._experts.values():
            oldest = s.oldest_online()
            if oldest is not None and s.state is not ExpertState.RESIDENT:
                deadlines.append(oldest + self.max_wait_s)
            if s.state is ExpertState.UNAVAILABLE:
                deadlines.append(s.retry_at)
        # Past deadlines need no timer: this pass acted on them, or the swap or call that
        # stopped it wakes the scheduler when it ends.
        future = [d for d in deadlines if d > now]
        return max(0.01, min(future) - now) if future else None

    def _grant(self, name: str, slot: _Expert) -> None:
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.future.done():
                slot.active += 1
                waiter.future.set_result(None)
        self.metrics.depth(self.name, name, 0)

    def _pick(self, now: float) -> str | None:
        """The expert to swap in: online work first, then the most waiting requests; the
        oldest online request once one has waited `max_wait_s`."""
        waiting = [
            (name, s)
            for name, s in self._experts.items()
            if s.waiters and s.state not in OCCUPYING and s.state is not ExpertState.UNAVAILABLE
        ]
        if not waiting:
            return None
        online = [(n, s, o) for n, s in waiting if (o := s.oldest_online()) is not None]
        starving = [(n, o) for n, _, o in online if now - o >= self.max_wait_s]
        if starving:
            return min(starving, key=lambda no: no[1])[0]
        return max(
            waiting,
            key=lambda ns: (
                ns[1].oldest_online() is not None,
                len(ns[1].waiters),
                -ns[1].waiters[0].since,
            ),
        )[0]

    def _plan_swap(self, now: float) -> list[float]:
        """Start the swap the waiting work needs, if any; returns when a lingering batch
        expert stops holding its place (the next look)."""
        target = self._pick(now)
        if target is None:
            for slot in self._experts.values():
                slot.draining = False  # nobody needs the place any more
            return []
        if self.occupied() < self.capacity:
            self._start_swap(None, target)
            return []
        oldest_online = self._experts[target].oldest_online()
        residents = [(n, s) for n, s in self._experts.items() if s.state is ExpertState.RESIDENT]
        idle = [(n, s) for n, s in residents if s.active == 0 and not s.waiters]
        # Only batch work wants the place: a resident that just served batch keeps it.
        moved_on = {w.sender for s in self._experts.values() for w in s.waiters if w.sender}
        lingering = (
            []
            if oldest_online is not None
            else [n for n, s in idle if self._lingers(s, now, moved_on)]
        )
        idle = [(n, s) for n, s in idle if n not in lingering]
        draining = [(n, s) for n, s in residents if s.draining]
        if draining:
            name, slot = draining[0]
            if slot.active == 0:
                self._start_swap(name, target)
        elif idle:
            self._start_swap(min(idle, key=lambda ns: ns[1].last_used)[0], target)
        elif oldest_online is not None and now - oldest_online >= self.max_wait_s and residents:
            # Starvation bound: stop admitting to the least busy resident, swap once it drains.
            name, slot = min(residents, key=lambda ns: (ns[1].active, ns[1].last_used))
            slot.draining = True
            log.info(
                "pool %s: draining %s for %s (waited %.1f s)",
                self.name,
                name,
                target,
                now - oldest_online,
            )
            if slot.active == 0:
                self._start_swap(name, target)
        return [self._experts[n].last_batch + self.batch_linger_s for n in lingering]

    def _lingers(self, slot: _Expert, now: float, moved_on: set[str]) -> bool:
        """A resident that served batch work just now: its next unit is probably coming —
        unless each sender that used it within the linger already waits for another expert
        (a lone worker that finished this expert's group). Unnamed senders never move on."""
        if now - slot.last_batch >= self.batch_linger_s:
            return False
        recent = [s for s, t in slot.batch_senders.items() if now - t < self.batch_linger_s]
        return any(s is None or s not in moved_on for s in recent)

    def _start_swap(self, victim: str | None, target: str) -> None:
        self.metrics.swap_started(self.name)
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
        slot.holds_place = False  # loading and unloading hold a place by their state
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
            slot.holds_place = await self._loaded(expert) is not False
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

    async def _loaded(self, expert: str) -> bool | None:
        """Whether the controller reports the expert loaded now; None when it cannot tell."""
        try:
            return expert in await self.controller.resident()
        # Not knowing is an answer too: the place stays taken, and we ask again later.
        except Exception as err:
            log.warning(
                "pool %s: cannot tell whether %s is still loaded: %s", self.name, expert, err
            )
            return None

    async def _reclaim(self, expert: str) -> None:
        """At its retry time, an expert whose swap failed while it may have been loaded: its
        place is freed once the controller confirms it is gone; if it is still loaded it is
        resident again (and unloaded the usual way when its place is needed)."""
        slot = self._experts[expert]
        try:
            loaded = await self._loaded(expert)
            if loaded is None:
                slot.retry_at = time.monotonic() + self.retry_after_s
                failure = ExpertUnavailable(
                    f"pool {self.name} cannot tell whether expert {expert} is still loaded "
                    f"after a failed swap (retry in {self.retry_after_s:.0f} s)",
                    expert=expert,
                )
                self._fail_waiters(expert, slot, failure)
                return
            slot.holds_place = False
            self._set(expert, ExpertState.RESIDENT if loaded else self.controller.unloaded_state)
            if not loaded:
                log.info("pool %s: %s confirmed unloaded; its place is free", self.name, expert)
        finally:
            self._swap = None
            self._wake()

    def _fail_waiters(self, name: str, slot: _Expert, err: ExpertUnavailable) -> None:
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(err)
        self.metrics.depth(self.name, name, 0)
