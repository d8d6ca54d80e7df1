"""A batch worker: takes units from the stream, routes lines, then runs them expert by expert.

Phase 1 routes ranges of lines (decisions are stored per line). When every line is
settled, run units are queued grouped by expert, largest group first, so each expert
is visited once per job. Units are acknowledged only after their results are written;
a unit whose worker died is reclaimed by another after `claim_idle_s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from coe.batch.jobs import BatchJobs, Unit
from coe.batch.wire import result_line
from coe.dispatch import complete_ranked
from coe.errors import CoeError, StoreUnavailable
from coe.pipeline import Engine, query_text
from coe.store import keys

log = logging.getLogger(__name__)


class BatchWorker:
    def __init__(
        self,
        jobs: BatchJobs,
        engine: Callable[[], Engine],
        name: str | None = None,
        claim_idle_s: float = 30.0,
        on_item: Callable[[str], None] | None = None,
    ):
        self.jobs = jobs
        self.store = jobs.store
        self.engine = engine
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.on_item = on_item or (lambda status: None)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self.jobs.ensure_group()
        backoff = 0.5
        while not stop.is_set():
            try:
                entries = await self.store.xautoclaim(
                    keys.BATCH_STREAM, keys.BATCH_GROUP, self.name, self.claim_idle_ms, count=1
                )
                if not entries:
                    entries = await self.store.xreadgroup(
                        keys.BATCH_STREAM, keys.BATCH_GROUP, self.name, count=1, block_ms=500
                    )
                for entry_id, fields in entries:
                    await self.process(Unit.parse(fields))
                    await self.store.xack(keys.BATCH_STREAM, keys.BATCH_GROUP, entry_id)
                backoff = 0.5
            except StoreUnavailable as err:
                log.warning(
                    "batch worker %s: %s; retrying in %.1f s", self.name, err.message, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15.0)

    async def process(self, unit: Unit) -> None:
        if await self.jobs.is_cancelled(unit.job_id):
            return
        if unit.phase == "route":
            await self.route_range(unit)
        elif unit.phase == "run":
            await self.run_expert(unit)
        else:
            log.error("batch worker %s: unknown unit phase %r skipped", self.name, unit.phase)

    # -- phase 1 ----------------------------------------------------------------------
    async def route_range(self, unit: Unit) -> None:
        engine = self.engine()
        routes_key = keys.batch_routes(unit.job_id)
        for index in range(unit.start, unit.end):
            if await self.store.hget(routes_key, str(index)) is not None:
                await self.jobs.settle(unit.job_id, index)
                continue
            if await self.jobs.has_result(unit.job_id, index):
                await self.jobs.settle(unit.job_id, index)
                continue
            custom_id, body = await self.jobs.item(unit.job_id, index)
            assert body is not None  # bad lines were answered at submission
            try:
                target = engine.resolve(str(body.get("model", "")))
                decision = await engine.decide(target, query_text(body["messages"]))
            except CoeError as err:
                await self._fail(unit.job_id, index, custom_id, err)
            else:
                route = {
                    "ranked": decision.ranked,
                    "k": decision.k,
                    "router": decision.router,
                    "reason": decision.reason,
                    "category": decision.category,
                }
                await self.store.hsetnx(routes_key, str(index), json.dumps(route))
            await self.jobs.settle(unit.job_id, index)
        await self._queue_runs_when_routed(unit.job_id)

    async def _queue_runs_when_routed(self, job_id: str) -> None:
        total = await self.jobs.total(job_id)
        if not await self.jobs.all_settled(job_id, total):
            return
        if await self.store.get(keys.batch_flag(job_id, "runs-queued")) is not None:
            return
        # Only one worker queues the runs; the lock expires if that worker dies first.
        lock = keys.batch_flag(job_id, "runs-lock")
        if not await self.store.set_if_absent(lock, self.name, ttl_s=self.claim_idle_ms / 1000):
            return
        routes = await self.store.hgetall(keys.batch_routes(job_id))
        groups: dict[str, list[int]] = {}
        for index, raw in routes.items():
            groups.setdefault(json.loads(raw)["ranked"][0], []).append(int(index))
        units = []
        for expert, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            items.sort()
            for start in range(0, len(items), self.jobs.chunk):
                chunk = tuple(items[start : start + self.jobs.chunk])
                units.append(Unit(job_id, "run", expert=expert, items=chunk))
        await self.jobs.enqueue(units)
        await self.store.set(keys.batch_flag(job_id, "runs-queued"), str(len(units)))
        log.info("batch %s routed: %d run units over %d experts", job_id, len(units), len(groups))

    # -- phase 2 ----------------------------------------------------------------------
    async def run_expert(self, unit: Unit) -> None:
        engine = self.engine()
        fields = [str(i) for i in unit.items]
        done = await self.store.hmget(keys.batch_results(unit.job_id), fields)
        todo = [i for i, d in zip(unit.items, done, strict=True) if d is None]
        fields = [str(i) for i in todo]
        items = await self.store.hmget(keys.batch_items(unit.job_id), fields)
        routes = await self.store.hmget(keys.batch_routes(unit.job_id), fields)

        async def one(index: int, raw_item: str | None, raw_route: str | None) -> None:
            assert raw_item is not None and raw_route is not None
            item = json.loads(raw_item)
            custom_id, body = item["custom_id"], item["body"]
            route = json.loads(raw_route)
            ranked = [unit.expert, *(e for e in route["ranked"] if e != unit.expert)]
            try:
                answer = await complete_ranked(
                    engine.client, ranked, engine.registry.snapshot(), body
                )
            except CoeError as err:
                await self._fail(unit.job_id, index, custom_id, err)
                return
            response: dict[str, Any] = dict(answer.response)
            response["coe"] = {
                "expert": answer.expert,
                "experts": [answer.expert],
                "router": route["router"],
                "reason": route["reason"],
                "category": route["category"],
                "failures": [vars(f) for f in answer.failures],
                "upstream_model": response.get("model"),
                "worker": self.name,
            }
            response["model"] = answer.expert
            line = result_line(unit.job_id, index, custom_id, body=response)
            if await self.jobs.write_result(unit.job_id, index, line, failed=False):
                self.on_item("completed")

        await asyncio.gather(*(one(*args) for args in zip(todo, items, routes, strict=True)))

    async def _fail(self, job_id: str, index: int, custom_id: str, err: CoeError) -> None:
        line = result_line(
            job_id,
            index,
            custom_id,
            status_code=err.status_code,
            error=(err.code or err.error_type, err.message),
        )
        if await self.jobs.write_result(job_id, index, line, failed=True):
            self.on_item("failed")
