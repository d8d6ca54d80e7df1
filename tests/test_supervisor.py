"""The supervisor: loops restarted when they die, stopped together on close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from coe.supervisor import Supervisor


async def test_a_loop_that_dies_is_restarted_and_one_that_returns_is_not() -> None:
    runs = {"flaky": 0, "once": 0}

    async def flaky() -> None:
        runs["flaky"] += 1
        if runs["flaky"] < 2:
            raise RuntimeError("boom")
        await loops.stopping.wait()

    async def once() -> None:
        runs["once"] += 1

    loops = Supervisor()
    loops.start("flaky", flaky)
    done = loops.start("once", once)
    await asyncio.wait_for(done, 1)
    for _ in range(300):  # the first restart comes after a pause of about a second
        if runs["flaky"] == 2:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the loop that died was not restarted")
    await loops.close()
    assert runs == {"flaky": 2, "once": 1}
    assert all(task.done() for task in loops.tasks)


async def test_close_stops_by_event_then_cancels_and_leaves_the_stuck_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    async def sleeper() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)  # outlives the grace: close must not wait for it

    async with Supervisor(grace_s=0.2) as loops:
        loops.start("sleeper", sleeper)
        stuck = loops.start("stubborn", stubborn)
        await asyncio.sleep(0)
    assert loops.stopping.is_set()
    assert seen == ["cancelled"]
    assert not stuck.done()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["background task stubborn did not stop on close"]
    await asyncio.wait_for(stuck, 5)
