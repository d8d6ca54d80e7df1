"""The stages a Ray batch job runs in its actors: route, answer (one expert's lines), combine.

Each actor builds the engine once (`EngineHost`: one encoder load per routing actor, none in
the others) and runs it in its own event loop; a batch's lines are answered concurrently.
The stages call the engine the Redis engine's workers call (`plan_many`, `answer_on`, `ask`,
`combine`) and write the same result lines (`coe.batch.wire`), so a line gets the same
decision, the same expert and the same output shape on either engine. A line's failure is
its error line; only a failure of the stage itself (its actor killed) makes Ray run the
batch again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from coe.aggregation import ExpertAnswer
from coe.batch.faults import Faults
from coe.batch.wire import answer_body, result_line
from coe.config import Settings
from coe.errors import CoeError
from coe.experts.schema import CoeConfig
from coe.pipeline import Plan

log = logging.getLogger(__name__)
T = TypeVar("T")
Batch = dict[str, Any]  # column -> values, as Ray hands a batch over (numpy arrays or lists)


@dataclass(frozen=True)
class EngineSpec:
    """What every actor builds its engine from: the settings (store, timeouts) and, when the
    driver read it, the config (a stored config in Redis still wins, as for workers)."""

    settings: Settings
    config: CoeConfig | None = None


class EngineHost:
    """An actor's engine, built once in the actor's own event loop."""

    def __init__(self, spec: EngineSpec, routers: bool):
        from coe.runtime import build_runtime

        self.loop = asyncio.new_event_loop()
        self.runtime = self.loop.run_until_complete(
            build_runtime(spec.settings, spec.config, serve_admin=False, routers=routers)
        )
        self.name = f"ray-{socket.gethostname()}-{os.getpid()}"
        self.faults = Faults.from_env()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    columns = list(batch)
    return [dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def batch_of(rows: list[dict[str, Any]], columns: list[str]) -> Batch:
    return {c: [r[c] for r in rows] for c in columns}


def failed_line(job_id: str, row: dict[str, Any], err: CoeError) -> str:
    error = (err.code or err.error_type, err.message)
    line = result_line(
        job_id, int(row["index"]), str(row["custom_id"]), status_code=err.status_code, error=error
    )
    return json.dumps(line)


def answered_line(job_id: str, row: dict[str, Any], plan: Plan, answer: Any, worker: str) -> str:
    body = answer_body(plan.decision, answer, worker=worker)
    return json.dumps(result_line(job_id, int(row["index"]), str(row["custom_id"]), body=body))


LINE = ["index", "custom_id", "body", "result"]
ROUTED = [*LINE, "plan", "experts"]
PART = ["index", "custom_id", "body", "plan", "expert", "part", "result"]


class RouteStage:
    """Plans a batch of lines with `Engine.plan_many` (the routers encode them together)."""

    def __init__(self, spec: EngineSpec, job_id: str):
        self.host = EngineHost(spec, routers=True)
        self.job_id = job_id

    def __call__(self, batch: Batch) -> Batch:
        rows = rows_of(batch)
        todo = [r for r in rows if not r["result"]]
        engine = self.host.runtime.engine
        plans = self.host.run(engine.plan_many([json.loads(r["body"]) for r in todo]))
        for row in rows:
            row.setdefault("plan", "")
            row.setdefault("experts", "[]")
        for row, plan in zip(todo, plans, strict=True):
            if isinstance(plan, CoeError):
                row["result"] = failed_line(self.job_id, row, plan)
            else:
                row["plan"] = json.dumps(plan.to_dict())
                row["experts"] = json.dumps(chosen(plan))
        return batch_of(rows, ROUTED)


def chosen(plan: Plan) -> list[str]:
    return [c.expert for c in plan.decision.candidates[: plan.decision.k]]


def expert_pairs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A routed line once per chosen expert (k of them), for the expert-by-expert stages."""
    if row["result"]:
        return []
    return [
        {k: row[k] for k in ("index", "custom_id", "body", "plan")} | {"expert": expert}
        for expert in json.loads(row["experts"])
    ]


class AnswerStage:
    """Answers one expert's lines: a k = 1 line in full (falling back down its ranked list,
    as online), a k > 1 line's part for the combine stage."""

    def __init__(self, spec: EngineSpec, job_id: str, concurrency: int = 16, tries: int = 3):
        self.host = EngineHost(spec, routers=False)
        self.job_id = job_id
        self.limit = asyncio.Semaphore(concurrency)
        self.tries = tries

    def __call__(self, batch: Batch) -> Batch:
        rows = rows_of(batch)
        self.host.run(_gather(self._line(row) for row in rows))
        return batch_of(rows, PART)

    async def _line(self, row: dict[str, Any]) -> None:
        """One line, tried again when something other than the experts fails (a bug, the
        store); after `tries` the line gets its error line and the batch goes on."""
        for attempt in range(1, self.tries + 1):
            try:
                await self._one(row)
                return
            except Exception as err:
                log.exception(
                    "batch %s line %s: attempt %d failed", self.job_id, row["index"], attempt
                )
                if attempt == self.tries:
                    row["part"], row["result"] = "", unit_failed(self.job_id, row, attempt, err)

    async def _one(self, row: dict[str, Any]) -> None:
        engine = self.host.runtime.engine
        plan = engine.restore(json.loads(row["plan"]))
        body = json.loads(row["body"])
        expert, name = str(row["expert"]), self.host.name
        row["part"], row["result"] = "", ""
        async with self.limit:
            if plan.fans_out:
                part = await engine.ask(expert, body, sender=name)
                self.host.faults.hit("run:answered")
                row["part"] = json.dumps(part.to_record())
                return
            try:
                answer = await engine.answer_on(plan, expert, body, sender=name)
            except CoeError as err:
                row["result"] = failed_line(self.job_id, row, err)
                return
            self.host.faults.hit("run:answered")
            row["result"] = answered_line(self.job_id, row, plan, answer, name)


class CombineStage:
    """A k > 1 line's parts, one per chosen expert, combined by the pipeline's aggregation
    (the aggregator runs here, after every expert has answered)."""

    def __init__(self, spec: EngineSpec, job_id: str):
        self.host = EngineHost(spec, routers=False)
        self.job_id = job_id

    def __call__(self, group: Batch) -> Batch:
        rows = rows_of(group)
        row = rows[0]
        engine = self.host.runtime.engine
        plan = engine.restore(json.loads(row["plan"]))
        stored = {str(r["expert"]): json.loads(r["part"]) for r in rows}
        parts = [
            ExpertAnswer.from_record(c.expert, c.score, stored.get(c.expert))
            for c in plan.decision.candidates[: plan.decision.k]
        ]
        body = json.loads(row["body"])
        try:
            answer = self.host.run(engine.combine(plan, parts, body))
        except CoeError as err:
            result = failed_line(self.job_id, row, err)
        else:
            self.host.faults.hit("aggregate:answered")
            result = answered_line(self.job_id, row, plan, answer, self.host.name)
        return {"index": [row["index"]], "result": [result]}


async def _gather(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*coros)


def unit_failed(job_id: str, row: dict[str, Any], tries: int, err: BaseException) -> str:
    """The error line of a line whose stage raised `tries` times (as the Redis engine gives
    up a unit after its deliveries)."""
    message = f"line {int(row['index']) + 1} failed {tries} times: {type(err).__name__}: {err}"
    error = ("batch_unit_failed", message)
    line = result_line(
        job_id, int(row["index"]), str(row["custom_id"]), status_code=500, error=error
    )
    return json.dumps(line)
