"""The stages a Ray batch job runs in its actors: route, answer (one expert's lines), combine.

Each actor builds the engine once (`EngineHost`: one encoder load per routing actor, none in
the others) and runs it in its own event loop; a batch's lines are answered concurrently.
The stages route with `plan_many` and run the per-line steps the Redis engine's workers run
(`coe.batch.lines`: answer, ask, combine and every result line), so a line gets the same
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

from coe.batch import lines
from coe.batch.assign import Assigner, assign_stored
from coe.batch.faults import Faults
from coe.config import Settings
from coe.errors import CoeError
from coe.experts.schema import CoeConfig
from coe.pipeline import Engine
from coe.routing.decision import RouteDecision

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

    def close(self) -> None:
        """For a host built outside an actor (the driver's assign step)."""
        self.run(self.runtime.close())
        self.loop.close()


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    columns = list(batch)
    return [dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def batch_of(rows: list[dict[str, Any]], columns: list[str]) -> Batch:
    return {c: [r[c] for r in rows] for c in columns}


def line_of(job_id: str, row: dict[str, Any]) -> lines.LineId:
    return lines.LineId(job_id, int(row["index"]), str(row["custom_id"]))


def text(outcome: lines.Outcome) -> str:
    """A finished line as its row holds it (`result`)."""
    return json.dumps(outcome.result)


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
                row["result"] = text(lines.failed(line_of(self.job_id, row), plan))
            else:
                row["plan"] = json.dumps(plan.to_dict())
                row["experts"] = json.dumps(plan.decision.chosen)
        return batch_of(rows, ROUTED)


def assign_job(
    spec: EngineSpec, job_id: str, assigner: Assigner, routed: list[dict[str, Any]]
) -> dict[int, str]:
    """The job's assign step, run once by the driver after every line is routed: the routed
    lines' plans (`index`, `plan` rows) through the assigner, in an engine built for it
    (none when no line was routed). Returns the lines whose plan it changed, stored."""
    stored = {int(r["index"]): json.loads(r["plan"]) for r in routed}
    if not stored:
        asyncio.run(assign_stored(assigner, _no_engine, job_id, stored))
        return {}
    host = EngineHost(spec, routers=False)
    try:
        engine = host.runtime.engine
        final = host.run(assign_stored(assigner, lambda: engine, job_id, stored))
    finally:
        host.close()
    if unknown := sorted(set(final) - set(stored)):
        raise ValueError(f"batch {job_id}: plans assigned to lines never routed: {unknown}")
    return {i: json.dumps(p) for i, p in final.items() if p != stored[i]}


def _no_engine() -> Engine:
    raise AssertionError("no line was routed: nothing to restore")


def reassign(batch: Batch, changed: dict[int, str]) -> Batch:
    """Routed rows with the plans the assign step changed (and their chosen experts)."""
    rows = rows_of(batch)
    for row in rows:
        plan = changed.get(int(row["index"]))
        if plan is not None:
            row["plan"] = plan
            row["experts"] = json.dumps(
                RouteDecision.from_dict(json.loads(plan)["decision"]).chosen
            )
    return batch_of(rows, ROUTED)


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
        expert, name, faults = str(row["expert"]), self.host.name, self.host.faults
        row["part"], row["result"] = "", ""
        async with self.limit:
            if plan.fans_out:
                part = await lines.ask(engine, expert, body, name, faults)
                row["part"] = json.dumps(part.to_record())
                return
            line = line_of(self.job_id, row)
            row["result"] = text(await lines.answer(engine, line, plan, expert, body, name, faults))


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
        body = json.loads(row["body"])
        line, name = line_of(self.job_id, row), self.host.name
        combined = lines.combine(engine, line, plan, stored, body, name, self.host.faults)
        return {"index": [row["index"]], "result": [text(self.host.run(combined))]}


async def _gather(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*coros)


def unit_failed(job_id: str, row: dict[str, Any], tries: int, err: BaseException) -> str:
    """The error line of a line whose stage raised `tries` times (as the Redis engine gives
    up a unit after its deliveries)."""
    message = f"line {int(row['index']) + 1} failed {tries} times: {type(err).__name__}: {err}"
    return text(lines.given_up(line_of(job_id, row), message))
