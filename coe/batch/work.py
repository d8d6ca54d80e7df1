"""The worker side of batch jobs in the store: the work stream and each phase's state
(routes, expert answers, results). Workers run phases through these methods and never touch
the store themselves. Every per-line write is set-if-absent, so a unit re-run after a worker
crash can neither answer a line twice nor overwrite what an earlier run stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coe.batch.units import Unit
from coe.errors import NotFound
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Line:
    """One valid input line: where it is, its id, its chat request, and (once routed) its plan."""

    index: int
    custom_id: str
    body: dict[str, Any]
    route: dict[str, Any] | None = None  # `Plan.to_dict()` from the route phase


class BatchWork:
    def __init__(self, store: Store, chunk: int = 64):
        self.store = store
        self.chunk = chunk

    async def ensure_group(self) -> None:
        await self.store.xgroup_create(keys.BATCH_STREAM, keys.BATCH_GROUP)

    async def is_cancelled(self, job_id: str) -> bool:
        return await self.store.hget(keys.batch_job(job_id), "status") == "cancelled"

    # -- the work stream ------------------------------------------------------------------
    async def enqueue(self, units: Iterable[Unit]) -> None:
        for unit in units:
            await self.store.xadd(keys.BATCH_STREAM, unit.fields())

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
        await self.store.xack(keys.BATCH_STREAM, keys.BATCH_GROUP, entry_id)

    async def queue_once(
        self, job_id: str, phase: str, units: list[Unit], owner: str, ttl_s: float
    ) -> bool:
        """Queue a phase's units exactly once per job, even when workers race or die.

        The lock expires if its holder dies before queueing; the flag is set only after
        the units are on the stream (a crash in between queues them twice: harmless).
        """
        flag = keys.batch_flag(job_id, f"{phase}-queued")
        if await self.store.get(flag) is not None:
            return False
        lock = keys.batch_flag(job_id, f"{phase}-lock")
        if not await self.store.set_if_absent(lock, owner, ttl_s=ttl_s):
            return False
        await self.enqueue(units)
        await self.store.set(flag, str(len(units)))
        return True

    # -- phase 1: route -------------------------------------------------------------------
    async def unrouted(self, unit: Unit) -> list[Line]:
        """The unit's lines still to route; lines routed or answered before a crash are
        settled again (idempotently) and left out."""
        fields = [str(i) for i in range(unit.start, unit.end)]
        routed = await self.store.hmget(keys.batch_routes(unit.job_id), fields)
        answered = await self.store.hmget(keys.batch_results(unit.job_id), fields)
        items = await self.store.hmget(keys.batch_items(unit.job_id), fields)
        todo = []
        for index, route, result, raw in zip(
            range(unit.start, unit.end), routed, answered, items, strict=True
        ):
            if route is not None or result is not None:
                await self.settle(unit.job_id, index)
                continue
            if raw is None:
                raise NotFound(f"batch {unit.job_id} has no line {index}")
            todo.append(_line(index, raw))
        return todo

    async def save_route(self, job_id: str, index: int, route: dict[str, Any]) -> None:
        await self.store.hsetnx(keys.batch_routes(job_id), str(index), json.dumps(route))
        await self.settle(job_id, index)

    async def settle(self, job_id: str, index: int) -> None:
        """Mark a line as routed or finished with an error (the route phase is done with it)."""
        await self.store.hsetnx(keys.batch_settled(job_id), str(index), "1")

    async def queue_runs_when_routed(self, job_id: str, owner: str, ttl_s: float) -> int | None:
        """Once every line is settled, queue the run units: lines grouped by expert, the
        largest group first, so each expert is visited once per job. Returns how many
        units this call queued (None when it was not the one to queue them)."""
        total = await self._total(job_id)
        if await self.store.hlen(keys.batch_settled(job_id)) < total:
            return None
        routes = await self.store.hgetall(keys.batch_routes(job_id))
        groups: dict[str, list[int]] = {}
        for index, raw in routes.items():
            for expert in _chosen(json.loads(raw)):
                groups.setdefault(expert, []).append(int(index))
        units = []
        for expert, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            items.sort()
            for start in range(0, len(items), self.chunk):
                chunk = tuple(items[start : start + self.chunk])
                units.append(Unit(job_id, "run", expert=expert, items=chunk))
        if await self.queue_once(job_id, "runs", units, owner, ttl_s):
            log.info(
                "batch %s routed: %d run units over %d experts", job_id, len(units), len(groups)
            )
            return len(units)
        return None

    # -- phase 2: run, expert by expert ---------------------------------------------------
    async def to_run(self, unit: Unit) -> list[Line]:
        """The unit's lines with no result yet, with their routes."""
        return [ln for ln in await self._lines(unit.job_id, unit.items) if ln.route is not None]

    async def has_part(self, job_id: str, index: int, expert: str) -> bool:
        return await self.store.hget(keys.batch_answers(job_id, index), expert) is not None

    async def save_part(self, job_id: str, index: int, expert: str, record: dict[str, Any]) -> None:
        """One expert's answer to a k > 1 line, kept for the aggregate phase."""
        await self.store.hsetnx(keys.batch_answers(job_id, index), expert, json.dumps(record))

    async def run_done(self, unit: Unit, owner: str, ttl_s: float) -> None:
        """Record a finished run unit; the last one queues the aggregate units."""
        await self.store.hsetnx(keys.batch_runs_done(unit.job_id), unit.key, "1")
        queued = await self.store.get(keys.batch_flag(unit.job_id, "runs-queued"))
        done = await self.store.hlen(keys.batch_runs_done(unit.job_id))
        if queued is None or done < int(queued):
            return
        routes = await self.store.hgetall(keys.batch_routes(unit.job_id))
        fanned = sorted(int(i) for i, raw in routes.items() if len(_chosen(json.loads(raw))) > 1)
        results = await self.store.hmget(keys.batch_results(unit.job_id), [str(i) for i in fanned])
        todo = [i for i, r in zip(fanned, results, strict=True) if r is None]
        units = [
            Unit(unit.job_id, "aggregate", items=tuple(todo[s : s + self.chunk]))
            for s in range(0, len(todo), self.chunk)
        ]
        if units:
            await self.queue_once(unit.job_id, "aggregates", units, owner, ttl_s)

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
    decision = route["decision"]
    return [c["expert"] for c in decision["candidates"][: int(decision["k"])]]
