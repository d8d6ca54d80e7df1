"""A batch worker: takes units from the stream and moves lines through three phases.

1. route: plan every line through the engine, a range at a time (routers batch the range);
2. run: lines grouped by expert, largest group first, so each expert is visited once per
   job; a line routed to k > 1 experts is in k groups and each expert's answer is kept;
3. aggregate (last): the k answers of each such line become one, as online.

The worker only runs phases: answering is the engine's (`plan_many`, `answer_on`, `ask`,
`combine`), the state is `BatchJobs`'. Units are acknowledged only after their writes; a unit
whose worker died is reclaimed by another after `claim_idle_s`, and every write is
set-if-absent, so a re-run never answers a line twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from coe.aggregation import ExpertAnswer
from coe.batch.units import Unit
from coe.batch.wire import answer_body, result_line
from coe.batch.work import BatchWork, Line
from coe.errors import CoeError, StoreUnavailable
from coe.observability import Metrics
from coe.pipeline import Answer, Engine, Plan

log = logging.getLogger(__name__)


class BatchWorker:
    def __init__(
        self,
        jobs: BatchWork,
        engine: Callable[[], Engine],
        name: str | None = None,
        claim_idle_s: float = 30.0,
        metrics: Metrics | None = None,
    ):
        """`engine` is called per unit, so a config reload takes effect between units."""
        self.jobs = jobs
        self.engine = engine
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_s = claim_idle_s
        self.metrics = metrics

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self.jobs.ensure_group()
        backoff = 0.5
        while not stop.is_set():
            try:
                for entry_id, unit in await self.jobs.claim(
                    self.name, int(self.claim_idle_s * 1000)
                ):
                    await self.process(unit)
                    await self.jobs.ack(entry_id)
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
            await self.route(unit)
            await self.jobs.queue_runs_when_routed(unit.job_id, self.name, self.claim_idle_s)
        elif unit.phase == "run":
            await self.run_expert(unit)
            await self.jobs.run_done(unit, self.name, self.claim_idle_s)
        else:
            await self.aggregate(unit)

    # -- phase 1 ------------------------------------------------------------------------
    async def route(self, unit: Unit) -> None:
        lines = await self.jobs.unrouted(unit)
        plans = await self.engine().plan_many([line.body for line in lines])
        for line, plan in zip(lines, plans, strict=True):
            if isinstance(plan, CoeError):
                await self._fail(unit.job_id, line, plan)
                await self.jobs.settle(unit.job_id, line.index)
            else:
                await self.jobs.save_route(unit.job_id, line.index, plan.to_dict())

    # -- phase 2 ------------------------------------------------------------------------
    async def run_expert(self, unit: Unit) -> None:
        engine = self.engine()

        async def one(line: Line) -> None:
            assert line.route is not None
            plan = engine.restore(line.route)
            if plan.fans_out:  # this expert's part; the aggregate phase combines them
                if await self.jobs.has_part(unit.job_id, line.index, unit.expert):
                    return
                part = await engine.ask(unit.expert, line.body, sender=self.name)
                await self.jobs.save_part(unit.job_id, line.index, unit.expert, part.to_record())
                return
            try:
                answer = await engine.answer_on(plan, unit.expert, line.body, sender=self.name)
            except CoeError as err:
                await self._fail(unit.job_id, line, err)
            else:
                await self._succeed(unit.job_id, line, plan, answer)

        await asyncio.gather(*(one(line) for line in await self.jobs.to_run(unit)))

    # -- phase 3 ------------------------------------------------------------------------
    async def aggregate(self, unit: Unit) -> None:
        engine = self.engine()
        for line, stored in await self.jobs.to_aggregate(unit):
            assert line.route is not None
            plan = engine.restore(line.route)
            picks = plan.decision.candidates[: plan.decision.k]
            parts = [
                ExpertAnswer.from_record(c.expert, c.score, stored.get(c.expert)) for c in picks
            ]
            try:
                answer = await engine.combine(plan, parts, line.body)
            except CoeError as err:
                await self._fail(unit.job_id, line, err)
            else:
                await self._succeed(unit.job_id, line, plan, answer)

    # -- results ------------------------------------------------------------------------
    async def _succeed(self, job_id: str, line: Line, plan: Plan, answer: Answer) -> None:
        body = answer_body(plan.decision, answer, worker=self.name)
        result = result_line(job_id, line.index, line.custom_id, body=body)
        if await self.jobs.write_result(job_id, line.index, result, failed=False):
            self._count("completed")

    async def _fail(self, job_id: str, line: Line, err: CoeError) -> None:
        error = (err.code or err.error_type, err.message)
        result = result_line(
            job_id, line.index, line.custom_id, status_code=err.status_code, error=error
        )
        if await self.jobs.write_result(job_id, line.index, result, failed=True):
            self._count("failed")

    def _count(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.batch_items.labels(status).inc()
