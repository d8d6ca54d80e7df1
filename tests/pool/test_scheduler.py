"""The pool's state machine and online scheduler, against a fake controller."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from coe.errors import ExpertUnavailable, UpstreamError
from coe.pool import ExpertState
from tests.pool.fakes import FakeController, checked_pool


async def call(pool, expert: str, hold_s: float = 0.0) -> float:  # type: ignore[no-untyped-def]
    """Admit, hold for a while; returns the seconds spent waiting for admission."""
    started = time.monotonic()
    async with pool.admit(expert):
        waited = time.monotonic() - started
        assert pool.state(expert) is ExpertState.RESIDENT
        await asyncio.sleep(hold_s)
    return waited


async def test_resident_requests_go_straight_through() -> None:
    ctl = FakeController(resident=["a"])
    pool = checked_pool(ctl, ["a", "b"], 1)
    await pool.start()
    try:
        waits = await asyncio.gather(*(call(pool, "a", 0.01) for _ in range(5)))
        assert max(waits) < 0.01
        assert ctl.log == []
        assert pool.resident() == ["a"]
    finally:
        await pool.close()


async def test_capacity_is_never_exceeded_under_random_load() -> None:
    ctl = FakeController(delay_s=0.01)
    experts = ["a", "b", "c", "d"]
    pool = checked_pool(ctl, experts, 2, max_wait_s=0.2)
    await pool.start()
    rng = random.Random(7)
    try:

        async def client(i: int) -> None:
            await asyncio.sleep(rng.random() * 0.3)
            await call(pool, rng.choice(experts), rng.random() * 0.02)

        await asyncio.gather(*(client(i) for i in range(60)))
        assert len(pool.resident()) <= 2
        assert set(ctl.loads()) == set(experts)
        assert pool.metrics.total_loads("test") == len(ctl.loads())
    finally:
        await pool.close()


async def test_swaps_in_the_expert_with_most_waiting_work() -> None:
    ctl = FakeController(resident=["a"])
    pool = checked_pool(ctl, ["a", "b", "c"], 1, max_wait_s=60)
    await pool.start()
    try:
        release = asyncio.Event()

        async def busy() -> None:
            async with pool.admit("a"):
                await release.wait()

        holder = asyncio.create_task(busy())
        await asyncio.sleep(0.01)
        tasks = [asyncio.create_task(call(pool, "b"))]
        await asyncio.sleep(0.01)  # b waits longer, but c has more waiting work
        tasks += [asyncio.create_task(call(pool, "c")) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert ctl.log == []  # a is busy and nobody starves: no swap yet
        assert pool.queue_depth("c") == 3
        release.set()
        await asyncio.gather(holder, *tasks)
        assert ctl.loads() == ["c", "b"]
        assert pool.metrics.snapshot()["test/c"]["loads"] == 1
    finally:
        await pool.close()


async def test_starvation_bound_holds_against_a_busy_resident() -> None:
    ctl = FakeController(delay_s=0.05, resident=["a"])
    max_wait = 0.3
    pool = checked_pool(ctl, ["a", "b"], 1, max_wait_s=max_wait)
    await pool.start()
    stop = asyncio.Event()
    try:
        calls: list[asyncio.Task[float]] = []

        async def hammer() -> None:  # overlapping calls: a is never idle
            while not stop.is_set():
                calls.append(asyncio.create_task(call(pool, "a", 0.05)))
                await asyncio.sleep(0.01)

        load = asyncio.create_task(hammer())
        await asyncio.sleep(0.1)
        waited = await call(pool, "b")
        stop.set()
        await load
        await asyncio.gather(*calls)
        # max wait + drain of in-flight a calls + unload + load, with slack for the loop
        assert max_wait <= waited < max_wait + 0.05 + 2 * ctl.delay_s + 0.15
    finally:
        stop.set()
        await pool.close()


async def test_resident_requests_are_not_delayed_by_a_swap_they_do_not_need() -> None:
    ctl = FakeController(delay_s=0.5, resident=["a", "b"])
    pool = checked_pool(ctl, ["a", "b", "c"], 2)
    await pool.start()
    try:
        async with pool.admit("a"):  # a was used last: b is the idle one to evict
            pass
        swap = asyncio.create_task(call(pool, "c"))
        await asyncio.sleep(0.05)
        assert pool.state("b") is ExpertState.UNLOADING
        waits = await asyncio.gather(*(call(pool, "a") for _ in range(5)))
        assert max(waits) < 0.05
        assert not swap.done()
        await swap
        assert ctl.log == [("unload", "b"), ("load", "c")]
    finally:
        await pool.close()


async def test_controller_failure_marks_the_expert_unavailable() -> None:
    ctl = FakeController(resident=["a"])
    ctl.fail.add("b")
    pool = checked_pool(ctl, ["a", "b"], 1, retry_after_s=0.3)
    await pool.start()
    try:
        with pytest.raises(ExpertUnavailable) as info:
            await call(pool, "b")
        assert isinstance(info.value, UpstreamError) and info.value.retryable
        assert pool.state("b") is ExpertState.UNAVAILABLE
        assert pool.unavailable() == {"b"}
        with pytest.raises(ExpertUnavailable, match="retry in"):
            await call(pool, "b")  # refused at once, no second load
        assert ctl.loads() == ["b"]
        assert await call(pool, "a") >= 0  # the pool still serves the others
        assert pool.metrics.failures["test", "b"] == 1
        ctl.fail.clear()
        await asyncio.sleep(0.35)
        await call(pool, "b")  # after retry_after_s it is tried again
        assert pool.state("b") is ExpertState.RESIDENT
    finally:
        await pool.close()


async def test_cancelled_waiters_leave_no_trace() -> None:
    ctl = FakeController(delay_s=0.2, resident=["a"])
    pool = checked_pool(ctl, ["a", "b"], 1)
    await pool.start()
    try:
        waiter = asyncio.create_task(call(pool, "b"))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.queue_depth("b") == 0
        await asyncio.sleep(0.4)
        await call(pool, "a")
    finally:
        await pool.close()


async def test_a_failed_unload_keeps_its_place_until_the_controller_confirms_it_gone() -> None:
    ctl = FakeController(resident=["a"])
    ctl.fail_unload.add("a")  # the unload fails and the model stays on the device
    ctl.blind = True  # and at first nobody can tell whether it is still there
    pool = checked_pool(ctl, ["a", "b"], 1, retry_after_s=0.3)
    await pool.start()
    try:
        waiter = asyncio.create_task(call(pool, "b"))
        await asyncio.sleep(0.45)  # the unload failed, then one retry found no answer
        assert pool.state("a") is ExpertState.UNAVAILABLE and pool.occupied() == 1
        assert not waiter.done() and ctl.loads() == []  # b never loaded beside a
        ctl.blind = False  # the backend answers again: a is still there, and resident
        ctl.fail_unload.clear()
        await asyncio.wait_for(waiter, 1.0)  # then a is unloaded for real, and b loaded
        assert ctl.log == [("unload", "a"), ("unload", "a"), ("load", "b")]
        assert ctl.peak <= 1 and pool.metrics.failures["test", "a"] == 1
    finally:
        await pool.close()


async def test_a_failed_unload_of_a_model_that_is_gone_frees_its_place_at_once() -> None:
    ctl = FakeController(resident=["a"])
    ctl.unload_lost.add("a")  # the unload raises, yet the model is gone
    pool = checked_pool(ctl, ["a", "b"], 1, retry_after_s=5)
    await pool.start()
    try:
        assert await call(pool, "b") < 1.0  # no waiting for a's retry time
        assert ctl.log == [("unload", "a"), ("load", "b")]
        assert pool.state("a") is ExpertState.UNAVAILABLE and pool.occupied() == 1
    finally:
        await pool.close()


async def batch_call(pool, expert: str, hold_s: float, sender: str | None = None) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    async with pool.admit(expert, "batch", sender):
        waited = time.monotonic() - started
        assert pool.state(expert) is ExpertState.RESIDENT
        await asyncio.sleep(hold_s)
    return waited


async def batch_worker(pool, expert: str, units: int = 4) -> None:  # type: ignore[no-untyped-def]
    """A batch worker: units of three concurrent calls, a short gap between units."""
    for _ in range(units):
        await asyncio.gather(*(batch_call(pool, expert, 0.02) for _ in range(3)))
        await asyncio.sleep(0.05)


async def test_batch_workers_sharing_an_expert_do_not_make_the_pool_alternate() -> None:
    ctl = FakeController(delay_s=0.05)
    pool = checked_pool(ctl, ["a", "b"], 1, max_wait_s=0.2, batch_linger_s=0.5)
    await pool.start()
    try:
        workers = [batch_worker(pool, "a") for _ in range(3)] + [batch_worker(pool, "b")]
        await asyncio.wait_for(asyncio.gather(*workers), 10)
        assert ctl.loads() == ["a", "b"]  # one load per distinct expert
    finally:
        await pool.close()


async def test_a_lone_worker_moving_to_its_next_expert_does_not_wait_out_the_linger() -> None:
    """The linger keeps an expert for the workers still on it; a worker that finished its
    group and now waits for the next expert is not kept waiting by its own last group."""
    ctl = FakeController(delay_s=0.02)
    pool = checked_pool(ctl, ["a", "b", "c"], 1, batch_linger_s=5.0)
    await pool.start()
    try:
        for expert in ("a", "b", "c"):  # one worker, its groups one after another
            await asyncio.gather(*(batch_call(pool, expert, 0.01, "w1") for _ in range(3)))
        waited = await asyncio.wait_for(batch_call(pool, "a", 0, "w1"), 2)
        assert waited < 1.0 and ctl.loads() == ["a", "b", "c", "a"]
        # another worker still on `a` keeps it: w2's next unit is coming
        await batch_call(pool, "a", 0, "w2")
        slow = asyncio.create_task(batch_call(pool, "b", 0, "w1"))
        await asyncio.sleep(0.5)
        assert not slow.done() and pool.resident() == ["a"]
        slow.cancel()
    finally:
        await pool.close()


async def test_an_online_request_does_not_wait_for_lingering_batch_work() -> None:
    ctl = FakeController(delay_s=0.05)
    pool = checked_pool(ctl, ["a", "b"], 1, max_wait_s=1.0, batch_linger_s=5.0)
    await pool.start()
    try:
        workers = asyncio.gather(*(batch_worker(pool, "a", units=8) for _ in range(3)))
        await asyncio.sleep(0.15)
        assert pool.resident() == ["a"]
        waited = await call(pool, "b")
        # a is evicted at its next idle moment (a gap between units), not after max_wait_s
        assert waited < 0.02 + 0.05 + 2 * ctl.delay_s + 0.15
        await asyncio.wait_for(workers, 10)
    finally:
        await pool.close()


async def test_batch_waiters_never_drain_a_busy_resident() -> None:
    ctl = FakeController(delay_s=0.02, resident=["a"])
    pool = checked_pool(ctl, ["a", "b"], 1, max_wait_s=0.1, batch_linger_s=0)
    await pool.start()
    stop = asyncio.Event()
    calls: list[asyncio.Task[float]] = []

    async def hammer() -> None:  # overlapping online calls: a is never idle
        while not stop.is_set():
            calls.append(asyncio.create_task(call(pool, "a", 0.05)))
            await asyncio.sleep(0.01)

    load = asyncio.create_task(hammer())
    try:
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(batch_call(pool, "b", 0))
        await asyncio.sleep(0.4)  # well past max_wait_s
        assert not waiter.done() and ctl.log == []
        stop.set()
        await load
        await asyncio.gather(*calls)
        await asyncio.wait_for(waiter, 1.0)  # a idle: b is swapped in the usual way
        assert ctl.loads() == ["b"]
    finally:
        stop.set()
        await pool.close()
