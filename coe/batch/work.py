"""The worker side of batch jobs in the store: the work stream and each phase's state
(routes, expert answers, results). Workers run phases through these methods and never touch
the store themselves. Every per-line write is set-if-absent, so a unit re-run after a worker
crash can neither answer a line twice nor overwrite what an earlier run stored.

Each phase queues the next before its unit is acknowledged; what a crash can still lose (a
phase lock held by a dead worker, a stream entry gone) the sweeper finds (`sweepable`,
`redrive`): a job with no work on the stream that nobody touched lately gets the work it
still lacks queued again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coe.batch.assign import AssignStored
from coe.batch.lifetimes import bound_job
from coe.batch.lines import LineId, error_line
from coe.batch.status import NOT_DRIVEN, STOPPED, Phase
from coe.batch.units import Unit
from coe.errors import NotFound
from coe.routing.decision import RouteDecision
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)

OnLocked = Callable[[], None]  # called between a phase's lock and its enqueue (a fault point)


@dataclass(frozen=True)
class Line:
    """One valid input line: where it is, its id, its chat request, and (once routed) its plan."""

    index: int
    custom_id: str
    body: dict[str, Any]
    route: dict[str, Any] | None = None  # `Plan.to_dict()` from the route phase


class BatchWork:
    def __init__(self, store: Store, chunk: int = 64, retention_s: float = 30 * 24 * 3600):
        self.store = store
        self.chunk = chunk
        self.retention_s = retention_s

    async def ensure_group(self) -> None:
        await self.store.xgroup_create(keys.BATCH_STREAM, keys.BATCH_GROUP)

    async def stopped(self, job_id: str) -> bool:
        """The job is cancelled or being cancelled, has failed or expired, or is gone from the
        store (past its retention): its units do nothing."""
        status = await self.store.hget(keys.batch_job(job_id), "status")
        return status is None or status in STOPPED

    # -- the work stream ------------------------------------------------------------------
    async def enqueue(self, units: Iterable[Unit]) -> None:
        indexed: set[str] = set()
        for unit in units:
            await self.store.xadd(keys.BATCH_STREAM, unit.fields())
            if unit.job_id not in indexed:  # after its first entry: the sweeper's to watch
                await self.store.hset(keys.BATCH_ACTIVE, {unit.job_id: "1"})
                indexed.add(unit.job_id)

    async def claim(self, worker: str, idle_ms: int, block_ms: int = 500) -> list[tuple[str, Unit]]:
        """The next unit: one a dead worker left (idle past `idle_ms`) first, else a new one."""
        entries = await self.store.xautoclaim(
            keys.BATCH_STREAM, keys.BATCH_GROUP, worker, idle_ms, count=1
        )
        if not entries:
            entries = await self.store.xreadgroup(
                keys.BATCH_STREAM, keys.BATCH_GROUP, worker, count=1, block_ms=block_ms
            )
        out = []
        for entry_id, fields in entries:
            try:
                out.append((entry_id, Unit.parse(fields)))
            except (KeyError, ValueError) as err:  # not ours to run, and never will be
                log.error("batch stream entry %s is malformed (%s); dropped", entry_id, err)
                await self.ack(entry_id)
        return out

    async def ack(self, entry_id: str) -> None:
        """Done with a unit: acknowledged, then deleted, so the stream holds only open work."""
        await self.store.xack(keys.BATCH_STREAM, keys.BATCH_GROUP, entry_id)
        await self.store.xdel(keys.BATCH_STREAM, entry_id)

    async def deliveries(self, entry_id: str) -> int:
        return await self.store.xdeliveries(keys.BATCH_STREAM, keys.BATCH_GROUP, entry_id)

    async def extend(self, worker: str, entry_id: str) -> bool:
        """Keep a unit this worker holds from looking abandoned; False once it lost it."""
        return await self.store.xextend(keys.BATCH_STREAM, keys.BATCH_GROUP, worker, entry_id)

    async def trim(self) -> int:
        """Drop acknowledged units a crash left on the stream (between ack and delete)."""
        return await self.store.xtrim_acknowledged(keys.BATCH_STREAM, keys.BATCH_GROUP)

    async def depth(self) -> tuple[int, int]:
        """Units (waiting, pending) on the work stream."""
        return await self.store.xdepth(keys.BATCH_STREAM, keys.BATCH_GROUP)

    async def queue_once(
        self,
        job_id: str,
        phase: str,
        units: list[Unit] | Callable[[], Awaitable[list[Unit]]],
        owner: str,
        ttl_s: float,
        on_locked: OnLocked | None = None,
    ) -> bool:
        """Queue a phase's units exactly once per job, even when workers race or die;
        `units` may be made under the lock (the assign barrier runs there).

        The lock expires if its holder dies before queueing (the sweeper then queues the
        phase); the flag is set only after the units are on the stream (a crash in between
        queues them twice: harmless).
        """
        flag = keys.batch_flag(job_id, f"{phase}-queued")
        if await self.store.get(flag) is not None:
            return False
        lock = keys.batch_flag(job_id, f"{phase}-lock")
        if not await self.store.set_if_absent(lock, owner, ttl_s=ttl_s):
            return False
        if on_locked is not None:
            on_locked()
        if callable(units):
            units = await units()
        await self.enqueue(units)
        await self.store.set(flag, str(len(units)))
        return True

    # -- phase 1: route -------------------------------------------------------------------
    async def unrouted(self, unit: Unit) -> list[Line]:
        """The unit's lines still to route; lines routed or answered before a crash are
        marked route-done again (idempotently) and left out."""
        fields = [str(i) for i in range(unit.start, unit.end)]
        routed = await self.store.hmget(keys.batch_routes(unit.job_id), fields)
        answered = await self.store.hmget(keys.batch_results(unit.job_id), fields)
        items = await self.store.hmget(keys.batch_items(unit.job_id), fields)
        todo = []
        for index, route, result, raw in zip(
            range(unit.start, unit.end), routed, answered, items, strict=True
        ):
            if route is not None or result is not None:
                await self.route_done(unit.job_id, index)
                continue
            if raw is None:
                raise NotFound(f"batch {unit.job_id} has no line {index}")
            todo.append(_line(index, raw))
        return todo

    async def save_route(self, job_id: str, index: int, route: dict[str, Any]) -> None:
        await self.store.hsetnx(keys.batch_routes(job_id), str(index), json.dumps(route))
        await self.route_done(job_id, index)

    async def route_done(self, job_id: str, index: int) -> None:
        """Mark a line as routed or finished with an error (the route phase is done with it)."""
        await self.store.hsetnx(keys.batch_route_done(job_id), str(index), "1")

    async def queue_runs_when_routed(
        self,
        job_id: str,
        owner: str,
        ttl_s: float,
        on_locked: OnLocked | None = None,
        assign: AssignStored | None = None,
    ) -> int | None:
        """Once the route phase is done with every line (the barrier), assign the job's
        plans (`assign`, once, under the run phase's lock; None keeps them as routed),
        then queue the run units: lines grouped by expert, the largest group first, so each
        expert is visited once per job. Returns how many expert groups this call queued
        (None when it was not the one to queue them)."""
        total = await self._total(job_id)
        if await self.store.hlen(keys.batch_route_done(job_id)) < total:
            return None
        made: list[Unit] = []
        groups = 0

        async def run_units() -> list[Unit]:
            nonlocal groups
            routes = await self._assigned(job_id, assign)
            units, groups = self._run_units(job_id, routes)
            made.extend(units)
            return units

        if not await self.queue_once(job_id, "runs", run_units, owner, ttl_s, on_locked):
            return None
        log.info("batch %s routed: %d run units over %d experts", job_id, len(made), groups)
        # run units may all have finished before the flag above was set: none of them could
        # queue the aggregates then
        await self.queue_aggregates_when_run(job_id, owner, ttl_s, on_locked)
        return groups

    async def _assigned(self, job_id: str, assign: AssignStored | None) -> dict[str, str]:
        """The job's routes once assigned: `assign` is called with every routed line's
        stored plan, and the plans it changes replace the routed ones in one write (no
        route is written after the barrier). A crash between that write and the flag may
        call it again, on its own output."""
        flag = keys.batch_flag(job_id, "assigned")
        routes = await self.store.hgetall(keys.batch_routes(job_id))
        if assign is None or await self.store.get(flag) is not None:
            return routes
        stored = {int(i): json.loads(raw) for i, raw in routes.items()}
        final = await assign(job_id, stored)
        if unknown := sorted(set(final) - set(stored)):
            raise ValueError(f"batch {job_id}: plans assigned to lines never routed: {unknown}")
        changed = {str(i): json.dumps(p) for i, p in final.items() if p != stored[i]}
        if changed:
            await self.store.hset(keys.batch_routes(job_id), changed)
            routes |= changed
        await self.store.set(flag, str(len(changed)))
        return routes

    def _run_units(
        self, job_id: str, routes: dict[str, str], only: set[int] | None = None
    ) -> tuple[list[Unit], int]:
        """Run units for the routed lines (or those in `only`), and how many expert groups."""
        groups: dict[str, list[int]] = {}
        for index, raw in routes.items():
            if only is None or int(index) in only:
                for expert in _chosen(json.loads(raw)):
                    groups.setdefault(expert, []).append(int(index))
        units = []
        for expert, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            items.sort()
            for start in range(0, len(items), self.chunk):
                chunk = tuple(items[start : start + self.chunk])
                units.append(Unit(job_id, Phase.RUN, expert=expert, items=chunk))
        return units, len(groups)

    # -- phase 2: run, expert by expert ---------------------------------------------------
    async def to_run(self, unit: Unit) -> list[Line]:
        """The unit's lines with no result yet, with their routes."""
        return [ln for ln in await self._lines(unit.job_id, unit.items) if ln.route is not None]

    async def has_part(self, job_id: str, index: int, expert: str) -> bool:
        return await self.store.hget(keys.batch_answers(job_id, index), expert) is not None

    async def save_part(self, job_id: str, index: int, expert: str, record: dict[str, Any]) -> None:
        """One expert's answer to a k > 1 line, kept for the aggregate phase."""
        await self.store.hsetnx(keys.batch_answers(job_id, index), expert, json.dumps(record))

    async def run_done(
        self, unit: Unit, owner: str, ttl_s: float, on_locked: OnLocked | None = None
    ) -> None:
        """Record a finished run unit; the last one queues the aggregate units."""
        await self.store.hsetnx(keys.batch_runs_done(unit.job_id), unit.key, "1")
        await self.queue_aggregates_when_run(unit.job_id, owner, ttl_s, on_locked)

    async def queue_aggregates_when_run(
        self, job_id: str, owner: str, ttl_s: float, on_locked: OnLocked | None = None
    ) -> bool:
        """Once every run unit is done, queue the aggregate units (if any line fans out)."""
        queued = await self.store.get(keys.batch_flag(job_id, "runs-queued"))
        done = await self.store.hlen(keys.batch_runs_done(job_id))
        if queued is None or done < int(queued):
            return False
        units = self._aggregate_units(job_id, await self._fanned_open(job_id))
        if not units:
            return False
        return await self.queue_once(job_id, "aggregates", units, owner, ttl_s, on_locked)

    async def _fanned_open(self, job_id: str) -> list[int]:
        """Lines routed to k > 1 experts that have no result yet."""
        routes = await self.store.hgetall(keys.batch_routes(job_id))
        fanned = sorted(int(i) for i, raw in routes.items() if len(_chosen(json.loads(raw))) > 1)
        results = await self.store.hmget(keys.batch_results(job_id), [str(i) for i in fanned])
        return [i for i, r in zip(fanned, results, strict=True) if r is None]

    def _aggregate_units(self, job_id: str, todo: list[int]) -> list[Unit]:
        return [
            Unit(job_id, Phase.AGGREGATE, items=tuple(todo[s : s + self.chunk]))
            for s in range(0, len(todo), self.chunk)
        ]

    # -- phase 3: aggregate ---------------------------------------------------------------
    async def to_aggregate(self, unit: Unit) -> list[tuple[Line, dict[str, dict[str, Any]]]]:
        """The unit's lines with no result yet, each with its experts' stored answers."""
        out = []
        for line in await self._lines(unit.job_id, unit.items):
            stored = await self.store.hgetall(keys.batch_answers(unit.job_id, line.index))
            out.append((line, {expert: json.loads(raw) for expert, raw in stored.items()}))
        return out

    # -- results --------------------------------------------------------------------------
    async def write_result(
        self, job_id: str, index: int, line: dict[str, Any], failed: bool
    ) -> bool:
        """Record a line's result unless one exists; True when this call wrote it."""
        wrote = await self.store.hsetnx(keys.batch_results(job_id), str(index), json.dumps(line))
        if wrote and failed:
            await self.store.hsetnx(keys.batch_failed(job_id), str(index), "1")
        return wrote

    # -- units that fail ------------------------------------------------------------------
    async def record_error(self, unit: Unit, error: str) -> None:
        await self.store.hset(keys.batch_unit_errors(unit.job_id), {_unit_id(unit): error})

    async def last_error(self, unit: Unit) -> str | None:
        return await self.store.hget(keys.batch_unit_errors(unit.job_id), _unit_id(unit))

    async def fail_open(
        self,
        job_id: str,
        indices: Sequence[int],
        error: tuple[str, str],
        status_code: int | None = None,
    ) -> list[int]:
        """Give each line among `indices` that has no result yet an error result; returns the
        lines this call answered. The stored lines are read without being trusted (a bad one
        may be why they are being given up)."""
        fields = [str(i) for i in indices]
        results = await self.store.hmget(keys.batch_results(job_id), fields)
        items = await self.store.hmget(keys.batch_items(job_id), fields)
        answered = []
        for index, result, raw in zip(indices, results, items, strict=True):
            if result is not None:
                continue
            line = LineId(job_id, index, _custom_id(index, raw))
            written = error_line(line, *error, status_code=status_code).result
            if await self.write_result(job_id, index, written, failed=True):
                answered.append(index)
        return answered

    # -- the sweeper ------------------------------------------------------------------------
    async def take_sweep(self, owner: str, every_s: float) -> bool:
        """The lease to sweep: one worker per `every_s`; it lapses, so a dead sweeper is
        replaced at the next turn."""
        return await self.store.set_if_absent(keys.BATCH_SWEEP_LEASE, owner, ttl_s=every_s)

    async def touch(self, job_id: str, ttl_s: float) -> None:
        """A worker is working on the job: the sweeper leaves it alone for `ttl_s`."""
        await self.store.set(keys.batch_alive(job_id), "1", ttl_s=ttl_s)

    async def sweepable(self) -> list[str]:
        """Jobs the workers drive that have no unit waiting or pending on the stream and
        that no worker touched lately. Finished or vanished jobs leave the index."""
        active = await self.store.hgetall(keys.BATCH_ACTIVE)
        if not active:
            return []
        queued = {
            f.get("job") for _, f in await self.store.xbacklog(keys.BATCH_STREAM, keys.BATCH_GROUP)
        }
        out = []
        for job_id in sorted(active):
            if job_id in queued:
                continue
            if await self._finished(job_id):
                await self.store.hdel(keys.BATCH_ACTIVE, job_id)
                await bound_job(self.store, job_id, self.retention_s)  # even if nobody reads it
            elif await self.store.get(keys.batch_alive(job_id)) is None:
                out.append(job_id)
        return out

    async def bound_if_finished(self, job_id: str) -> None:
        """After a unit: a job it may have outlived gets the bound back on whatever the unit
        created (`coe.batch.lifetimes`); a running job's keys get theirs when it finishes."""
        if await self._finished(job_id):
            await bound_job(self.store, job_id, self.retention_s)

    async def _finished(self, job_id: str) -> bool:
        job = await self.store.hgetall(keys.batch_job(job_id))
        if not job or job.get("status") in NOT_DRIVEN:
            return True
        return await self.store.hlen(keys.batch_results(job_id)) >= int(job["total"])

    async def redrive(
        self,
        job_id: str,
        owner: str,
        ttl_s: float,
        on_locked: OnLocked | None = None,
        assign: AssignStored | None = None,
    ) -> str:
        """Queue what a job with no work on the stream still lacks: route units for the
        lines the route phase is not done with; else its run units (once, through
        `queue_once`) or those not done; else its aggregate units, and a run again for any
        line still without a result.
        Units whose lines are already finished do nothing when they run. Says what it did."""
        total = await self._total(job_id)
        every = [str(i) for i in range(total)]
        routed = await self.store.hmget(keys.batch_route_done(job_id), every)
        to_route = [i for i, d in enumerate(routed) if d is None]
        if to_route:
            units = [Unit(job_id, Phase.ROUTE, a, b) for a, b in _ranges(to_route, self.chunk)]
            await self.enqueue(units)
            return f"{len(units)} route units"
        if await self.store.get(keys.batch_flag(job_id, "runs-queued")) is None:
            groups = await self.queue_runs_when_routed(job_id, owner, ttl_s, on_locked, assign)
            return "" if groups is None else f"run units for {groups} experts"
        routes = await self.store.hgetall(keys.batch_routes(job_id))
        done = await self.store.hgetall(keys.batch_runs_done(job_id))
        lost = [u for u in self._run_units(job_id, routes)[0] if u.key not in done]
        if lost:
            await self.enqueue(lost)
            return f"{len(lost)} run units"
        if await self.store.get(keys.batch_flag(job_id, "aggregates-queued")) is None:
            if await self.queue_aggregates_when_run(job_id, owner, ttl_s, on_locked):
                return "aggregate units"
        fanned = await self._fanned_open(job_id)
        results = await self.store.hmget(keys.batch_results(job_id), every)
        single = {i for i, r in enumerate(results) if r is None and str(i) in routes}
        single -= set(fanned)
        units = self._aggregate_units(job_id, fanned) + self._run_units(job_id, routes, single)[0]
        await self.enqueue(units)
        return f"{len(units)} units for unanswered lines" if units else ""

    # -- helpers --------------------------------------------------------------------------
    async def _total(self, job_id: str) -> int:
        raw = await self.store.hget(keys.batch_job(job_id), "total")
        if raw is None:
            raise NotFound(f"no batch job {job_id!r}")
        return int(raw)

    async def _lines(self, job_id: str, indices: Sequence[int]) -> list[Line]:
        """Lines among `indices` that have no result yet, with their routes (one read each)."""
        fields = [str(i) for i in indices]
        done = await self.store.hmget(keys.batch_results(job_id), fields)
        todo = [i for i, d in zip(indices, done, strict=True) if d is None]
        fields = [str(i) for i in todo]
        items = await self.store.hmget(keys.batch_items(job_id), fields)
        routes = await self.store.hmget(keys.batch_routes(job_id), fields)
        out = []
        for index, raw, route in zip(todo, items, routes, strict=True):
            if raw is None:
                raise NotFound(f"batch {job_id} has no line {index}")
            out.append(_line(index, raw, json.loads(route) if route is not None else None))
        return out


def _line(index: int, raw: str, route: dict[str, Any] | None = None) -> Line:
    data = json.loads(raw)
    return Line(index, data["custom_id"], data["body"], route)


def _chosen(route: dict[str, Any]) -> list[str]:
    return RouteDecision.from_dict(route["decision"]).chosen


def _unit_id(unit: Unit) -> str:
    return f"{unit.phase}/{unit.key}"


def _custom_id(index: int, raw: str | None) -> str:
    try:
        custom_id = json.loads(raw or "")["custom_id"]
    except (ValueError, KeyError, TypeError):
        return f"line-{index + 1}"
    return str(custom_id)


def _ranges(indices: list[int], size: int) -> list[tuple[int, int]]:
    """Sorted indices as [start, end) ranges of consecutive lines, at most `size` long."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i and i - out[-1][0] < size:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
