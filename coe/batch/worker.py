"""A batch worker: takes units from the stream and moves lines through three phases.

1. route: plan every line through the engine, a range at a time (routers batch the range);
   once every line is routed, the job's assigner gives each its final plan (the barrier);
2. run: lines grouped by expert, largest group first, so each expert is visited once per
   job; a line routed to k > 1 experts is in k groups and each expert's answer is kept;
3. aggregate (last): the k answers of each such line become one, as online.

The worker only runs phases: answering is the engine's (`plan_many`, `answer_on`, `ask`,
`combine`), the state is `BatchWork`'s. Crash safety:

- a unit is acknowledged only after its writes, and every write is set-if-absent: a unit
  whose worker died is reclaimed by another after `claim_idle_s` and re-run harmlessly;
- while a unit is processed a heartbeat keeps it claimed, so a live worker's long unit is
  not re-run by another;
- a unit that raises is logged, counted and left for redelivery; after `max_deliveries` its
  open lines get `batch_unit_failed` results and the job goes on;
- every `sweep_every_s` one worker (under a lease) queues again the work of jobs that have
  none queued (`BatchWork.sweepable`, `redrive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from coe.backoff import Backoff
from coe.batch import lines
from coe.batch.assign import Assigner, KeepRouted, Stored, assign_stored
from coe.batch.faults import Faults
from coe.batch.status import NEXT, Phase
from coe.batch.units import Unit
from coe.batch.work import BatchWork, Line
from coe.errors import CoeError, StoreUnavailable
from coe.observability import Metrics
from coe.pipeline import Engine
from coe.routing import Caller
from coe.store import keys

log = logging.getLogger(__name__)


class BatchWorker:
    def __init__(
        self,
        jobs: BatchWork,
        engine: Callable[[], Engine],
        name: str | None = None,
        claim_idle_s: float = 30.0,
        metrics: Metrics | None = None,
        *,
        max_deliveries: int = 3,
        sweep_every_s: float | None = None,
        faults: Faults | None = None,
        assigner: Assigner | None = None,
    ):
        """`engine` is called per unit, so a config reload takes effect between units.
        `sweep_every_s` defaults to `claim_idle_s`; `faults` to `COE_BATCH_FAULT` (tests);
        `assigner` (the job's plans at the route barrier) to keeping them as routed."""
        self.jobs = jobs
        self.engine = engine
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_s = claim_idle_s
        self.metrics = metrics or Metrics()
        self.max_deliveries = max_deliveries
        self.sweep_every_s = sweep_every_s or claim_idle_s
        self.faults = faults or Faults.from_env()
        self.assigner = assigner or KeepRouted()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        ready = False
        next_sweep = 0.0
        backoff = Backoff(first_s=0.5, max_s=15.0)
        while not stop.is_set():
            try:
                if not ready:
                    await self.jobs.ensure_group()
                    ready = True
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_every_s
                    await self.maintain()
                for entry_id, unit in await self.jobs.claim(
                    self.name, int(self.claim_idle_s * 1000)
                ):
                    await self.handle(entry_id, unit)
                backoff.healthy()
            except StoreUnavailable as err:
                ready = False  # Redis may come back empty: the consumer group is made again
                log.warning(
                    "batch worker %s: %s; retrying in %.1f s",
                    self.name,
                    err.message,
                    backoff.delay_s,
                )
            except Exception:  # a bug in the worker's own bookkeeping must not stop it
                log.exception("batch worker %s: unexpected error; retrying", self.name)
                self.metrics.batch_unit_errors.labels("worker").inc()
            else:
                continue
            await backoff.sleep()

    # -- one unit -------------------------------------------------------------------------
    async def handle(self, entry_id: str, unit: Unit) -> None:
        """Process a unit and acknowledge it; after `max_deliveries` failed tries (errors, or
        workers that died on it), give it up instead."""
        deliveries = max(await self.jobs.deliveries(entry_id), 1)
        if deliveries > self.max_deliveries:  # the workers before died while on it
            last = await self.jobs.last_error(unit)
            await self.give_up(unit, deliveries - 1, last or "its worker stopped while on it")
        else:
            error = await self.attempt(entry_id, unit, deliveries)
            if error is not None:
                if deliveries < self.max_deliveries:
                    return  # left pending: another delivery after `claim_idle_s`
                await self.give_up(unit, deliveries, error)
        await self.jobs.bound_if_finished(unit.job_id)
        await self.jobs.ack(entry_id)

    async def attempt(self, entry_id: str, unit: Unit, delivery: int) -> str | None:
        """Process the unit under a heartbeat; the error when it raised (None: done)."""
        started = time.monotonic()
        done = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(entry_id, unit.job_id, done))
        try:
            await self.process(unit)
        except StoreUnavailable:
            raise
        except Exception as err:  # one bad unit must not stop the worker: retried, then given up
            reason = f"{type(err).__name__}: {err}"
            log.exception(
                "batch %s %s failed (delivery %d of %d)",
                unit.job_id,
                unit.label,
                delivery,
                self.max_deliveries,
            )
            self.metrics.batch_unit_errors.labels(unit.phase).inc()
            await self.jobs.record_error(unit, reason)
            return reason
        finally:
            done.set()
            await beat
        self.metrics.batch_unit_seconds.labels(unit.phase).observe(time.monotonic() - started)
        return None

    async def _heartbeat(self, entry_id: str, job_id: str, done: asyncio.Event) -> None:
        """Keep the unit claimed (and its job marked alive) until `done`. It is stopped by
        the event, not cancelled: a store call cut off midway could swallow the cancel."""
        while True:
            try:
                if not await self.jobs.extend(self.name, entry_id):
                    log.warning("batch unit %s was taken over by another worker", entry_id)
                    return
                await self.jobs.touch(job_id, self.claim_idle_s)
            except StoreUnavailable as err:
                log.warning("batch unit %s heartbeat: %s", entry_id, err.message)
            if await _set_within(done, self.claim_idle_s / 3):
                return

    async def give_up(self, unit: Unit, times: int, reason: str) -> None:
        """Answer the unit's open lines with `batch_unit_failed`, then move the job on."""
        if await self.jobs.stopped(unit.job_id):
            return
        message = f"batch {unit.label} failed {times} times: {reason}"
        log.error("batch %s: %s; its lines are answered with the error", unit.job_id, message)
        self.metrics.batch_units_given_up.labels(unit.phase).inc()
        indices = list(range(unit.start, unit.end)) if unit.phase == Phase.ROUTE else unit.items
        error = ("batch_unit_failed", message)
        answered = await self.jobs.fail_open(unit.job_id, indices, error, status_code=500)
        self.metrics.batch_items.labels("failed").inc(len(answered))
        if unit.phase == Phase.ROUTE:  # route-done whoever answered them, so the job moves on
            for index in indices:
                await self.jobs.route_done(unit.job_id, index)
        await self.next_phase(unit)

    async def process(self, unit: Unit) -> None:
        if await self.jobs.stopped(unit.job_id):
            return
        steps = {
            Phase.ROUTE: self.route,
            Phase.RUN: self.run_expert,
            Phase.AGGREGATE: self.aggregate,
        }
        await steps[unit.phase](unit)
        await self.next_phase(unit)

    async def next_phase(self, unit: Unit) -> None:
        """Queue what follows the unit's phase (`coe.batch.status.NEXT`) once every unit of
        it is done; after routing, the job's plans are assigned first."""
        following = NEXT[unit.phase]
        if following == Phase.RUN:
            groups = await self.jobs.queue_runs_when_routed(
                unit.job_id, self.name, self.claim_idle_s, self._locked, self._assign
            )
            if groups is not None:
                self.metrics.batch_expert_groups.observe(groups)
        elif following == Phase.AGGREGATE:
            await self.jobs.run_done(unit, self.name, self.claim_idle_s, self._locked)

    async def _assign(self, job_id: str, stored: dict[int, Stored]) -> dict[int, Stored]:
        return await assign_stored(self.assigner, self.engine, job_id, stored)

    def _locked(self) -> None:
        self.faults.hit("queue:locked")

    # -- the sweeper ----------------------------------------------------------------------
    async def maintain(self) -> None:
        """Publish the stream's depth; sweep when this worker holds the lease."""
        waiting, pending = await self.jobs.depth()
        self.metrics.batch_queue_depth.labels("waiting").set(waiting)
        self.metrics.batch_queue_depth.labels("pending").set(pending)
        if await self.jobs.take_sweep(self.name, self.sweep_every_s):
            await self.sweep()

    async def sweep(self) -> None:
        trimmed = await self.jobs.trim()
        if trimmed:
            log.info("batch stream: %d acknowledged units trimmed", trimmed)
        for job_id in await self.jobs.sweepable():
            try:
                what = await self.jobs.redrive(
                    job_id, self.name, self.claim_idle_s, self._locked, self._assign
                )
            except StoreUnavailable:
                raise
            except Exception:  # one broken job must not keep the others from being swept
                log.exception("batch %s: the sweeper could not queue its work", job_id)
                continue
            if what:
                log.warning("batch %s had no work queued; the sweeper queued %s", job_id, what)
                self.metrics.batch_requeued.inc()

    # -- phase 1 ------------------------------------------------------------------------
    async def route(self, unit: Unit) -> None:
        todo = await self.jobs.unrouted(unit)
        owner = await self.jobs.store.hget(keys.batch_job(unit.job_id), "owner")
        caller = Caller(key_id=owner or None)  # the key that created the job, if one did
        plans = await self.engine().plan_many([line.body for line in todo], caller)
        for line, plan in zip(todo, plans, strict=True):
            if isinstance(plan, CoeError):
                await self._write(unit.job_id, line, lines.failed(_id(unit, line), plan))
                await self.jobs.route_done(unit.job_id, line.index)
            else:
                self.metrics.observe_plan(plan)  # the decision's time: the line's share
                await self.jobs.save_route(unit.job_id, line.index, plan.to_dict())
                self.faults.hit("route:saved")

    # -- phase 2 ------------------------------------------------------------------------
    async def run_expert(self, unit: Unit) -> None:
        engine = self.engine()

        async def one(line: Line) -> None:
            assert line.route is not None
            plan = engine.restore(line.route)
            if plan.fans_out:  # this expert's part; the aggregate phase combines them
                if await self.jobs.has_part(unit.job_id, line.index, unit.expert):
                    return
                part = await lines.ask(engine, unit.expert, line.body, self.name, self.faults)
                await self.jobs.save_part(unit.job_id, line.index, unit.expert, part.to_record())
                return
            outcome = await lines.answer(
                engine, _id(unit, line), plan, unit.expert, line.body, self.name, self.faults
            )
            await self._write(unit.job_id, line, outcome)

        await asyncio.gather(*(one(line) for line in await self.jobs.to_run(unit)))

    # -- phase 3 ------------------------------------------------------------------------
    async def aggregate(self, unit: Unit) -> None:
        engine = self.engine()
        for line, stored in await self.jobs.to_aggregate(unit):
            assert line.route is not None
            plan = engine.restore(line.route)
            outcome = await lines.combine(
                engine, _id(unit, line), plan, stored, line.body, self.name, self.faults
            )
            await self._write(unit.job_id, line, outcome)

    # -- results ------------------------------------------------------------------------
    async def _write(self, job_id: str, line: Line, outcome: lines.Outcome) -> None:
        if not await self.jobs.write_result(job_id, line.index, outcome.result, outcome.failed):
            return
        if outcome.failed:
            self.metrics.batch_items.labels("failed").inc()
            return
        self.metrics.batch_items.labels("completed").inc()
        if outcome.answer is not None:
            self.metrics.observe_fallbacks([f.expert for f in outcome.answer.failures])


def _id(unit: Unit, line: Line) -> lines.LineId:
    return lines.LineId(unit.job_id, line.index, line.custom_id)


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait at most `timeout_s` for `event`; whether it is set."""
    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()
