"""A batch worker: takes units from the stream and moves lines through three phases.

1. route: decide every line (decisions are stored per line);
2. run: lines grouped by expert, largest group first, so each expert is visited once per
   job; a line routed to k > 1 experts is in k groups and its answers are stored;
3. aggregate (last): the k answers of each such line become one, as online.

Units are acknowledged only after their writes; a unit whose worker died is reclaimed
by another after `claim_idle_s`, and every write is idempotent (HSETNX), so a re-run
never answers a line twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from coe.aggregation import Aggregation, ExpertAnswer
from coe.batch.jobs import BatchJobs, Unit
from coe.batch.wire import result_line
from coe.dispatch import complete_ranked
from coe.errors import CoeError, StoreUnavailable, UpstreamError, UpstreamTimeout
from coe.experts.schema import AggregationSpec
from coe.pipeline import Engine, query_text
from coe.routing.decision import RouteDecision
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
            await self.store.hsetnx(keys.batch_runs_done(unit.job_id), _unit_key(unit), "1")
            await self._queue_aggregates_when_run(unit.job_id)
        elif unit.phase == "aggregate":
            await self.aggregate(unit)
        else:
            log.error("batch worker %s: unknown unit phase %r skipped", self.name, unit.phase)

    # -- phase 1: route ---------------------------------------------------------------
    async def route_range(self, unit: Unit) -> None:
        engine = self.engine()
        routes_key = keys.batch_routes(unit.job_id)
        fields = [str(i) for i in range(unit.start, unit.end)]
        # One read per hash for the whole range, not a round trip per line and hash.
        routed = await self.store.hmget(routes_key, fields)
        answered = await self.store.hmget(keys.batch_results(unit.job_id), fields)
        items = await self.store.hmget(keys.batch_items(unit.job_id), fields)
        for index, route_raw, result_raw, item_raw in zip(
            range(unit.start, unit.end), routed, answered, items, strict=True
        ):
            if route_raw is not None or result_raw is not None:
                await self.jobs.settle(unit.job_id, index)  # done before a crash
                continue
            assert item_raw is not None
            item = json.loads(item_raw)
            custom_id, body = item["custom_id"], item["body"]
            assert body is not None  # bad lines were answered at submission
            try:
                target = engine.resolve(str(body.get("model", "")))
                decision = await engine.decide(target, query_text(body["messages"]))
            except CoeError as err:
                await self._fail(unit.job_id, index, custom_id, err)
            else:
                route = {"decision": decision.to_dict(), "pipeline": target.pipeline}
                await self.store.hsetnx(routes_key, str(index), json.dumps(route))
            await self.jobs.settle(unit.job_id, index)
        await self._queue_runs_when_routed(unit.job_id)

    async def _queue_runs_when_routed(self, job_id: str) -> None:
        total = await self.jobs.total(job_id)
        if not await self.jobs.all_settled(job_id, total):
            return
        routes = await self.store.hgetall(keys.batch_routes(job_id))
        groups: dict[str, list[int]] = {}
        for index, raw in routes.items():
            for expert in RouteDecision.from_dict(json.loads(raw)["decision"]).chosen:
                groups.setdefault(expert, []).append(int(index))
        units = []
        for expert, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            items.sort()
            for start in range(0, len(items), self.jobs.chunk):
                chunk = tuple(items[start : start + self.jobs.chunk])
                units.append(Unit(job_id, "run", expert=expert, items=chunk))
        if await self._queue_once(job_id, "runs", units):
            log.info(
                "batch %s routed: %d run units over %d experts", job_id, len(units), len(groups)
            )

    async def _queue_once(self, job_id: str, phase: str, units: list[Unit]) -> bool:
        """Queue a phase's units exactly once per job, even when workers race or die.

        The lock expires if its holder dies before queueing; the flag is set only after
        the units are on the stream (a crash in between queues them twice: harmless).
        """
        flag = keys.batch_flag(job_id, f"{phase}-queued")
        if await self.store.get(flag) is not None:
            return False
        lock = keys.batch_flag(job_id, f"{phase}-lock")
        if not await self.store.set_if_absent(lock, self.name, ttl_s=self.claim_idle_ms / 1000):
            return False
        await self.jobs.enqueue(units)
        await self.store.set(flag, str(len(units)))
        return True

    # -- phase 2: run, expert by expert ---------------------------------------------------
    async def run_expert(self, unit: Unit) -> None:
        fields = [str(i) for i in unit.items]
        done = await self.store.hmget(keys.batch_results(unit.job_id), fields)
        todo = [i for i, d in zip(unit.items, done, strict=True) if d is None]
        fields = [str(i) for i in todo]
        items = await self.store.hmget(keys.batch_items(unit.job_id), fields)
        routes = await self.store.hmget(keys.batch_routes(unit.job_id), fields)

        async def one(index: int, raw_item: str | None, raw_route: str | None) -> None:
            assert raw_item is not None and raw_route is not None
            item = json.loads(raw_item)
            decision = RouteDecision.from_dict(json.loads(raw_route)["decision"])
            if decision.k > 1:
                await self._answer_part(unit, index, item["body"])
            else:
                await self._answer_line(unit, index, item["custom_id"], item["body"], decision)

        await asyncio.gather(*(one(*args) for args in zip(todo, items, routes, strict=True)))

    async def _answer_line(
        self,
        unit: Unit,
        index: int,
        custom_id: str,
        body: dict[str, Any],
        decision: RouteDecision,
    ) -> None:
        """k = 1: this expert answers, falling back down the ranked list."""
        engine = self.engine()
        ranked = [unit.expert, *(e for e in decision.ranked if e != unit.expert)]
        try:
            answer = await complete_ranked(engine.client, ranked, engine.registry.snapshot(), body)
        except CoeError as err:
            await self._fail(unit.job_id, index, custom_id, err)
            return
        meta = {
            "expert": answer.expert,
            "experts": [answer.expert],
            "failures": [vars(f) for f in answer.failures],
        }
        await self._succeed(unit.job_id, index, custom_id, answer.response, decision, meta)

    async def _answer_part(self, unit: Unit, index: int, body: dict[str, Any]) -> None:
        """k > 1: store this expert's answer; the aggregate phase combines them."""
        answers_key = keys.batch_answers(unit.job_id, index)
        if await self.store.hget(answers_key, unit.expert) is not None:
            return
        engine = self.engine()
        record: dict[str, Any]
        try:
            spec = engine.registry.get(unit.expert)
            response = await engine.client.complete(spec, body)
        except UpstreamError as err:
            record = {"status": "failed", "error": err.message, "code": err.status_code}
        except CoeError as err:  # the expert was removed since routing
            record = {"status": "failed", "error": err.message, "code": 502}
        else:
            record = {"status": "ok", "response": response}
        await self.store.hsetnx(answers_key, unit.expert, json.dumps(record))

    async def _queue_aggregates_when_run(self, job_id: str) -> None:
        queued = await self.store.get(keys.batch_flag(job_id, "runs-queued"))
        if queued is None or await self.store.hlen(keys.batch_runs_done(job_id)) < int(queued):
            return
        routes = await self.store.hgetall(keys.batch_routes(job_id))
        fanned = sorted(int(i) for i, raw in routes.items() if json.loads(raw)["decision"]["k"] > 1)
        results = await self.store.hmget(keys.batch_results(job_id), [str(i) for i in fanned])
        todo = [i for i, r in zip(fanned, results, strict=True) if r is None]
        units = [
            Unit(job_id, "aggregate", items=tuple(todo[s : s + self.jobs.chunk]))
            for s in range(0, len(todo), self.jobs.chunk)
        ]
        if units:
            await self._queue_once(job_id, "aggregates", units)

    # -- phase 3: aggregate -------------------------------------------------------------
    async def aggregate(self, unit: Unit) -> None:
        engine = self.engine()
        for index in unit.items:
            if await self.jobs.has_result(unit.job_id, index):
                continue
            custom_id, body = await self.jobs.item(unit.job_id, index)
            raw_route = await self.store.hget(keys.batch_routes(unit.job_id), str(index))
            assert body is not None and raw_route is not None
            route = json.loads(raw_route)
            decision = RouteDecision.from_dict(route["decision"])
            pipeline = engine.pipelines.get(route["pipeline"] or "")
            spec = pipeline.aggregation if pipeline is not None else AggregationSpec()
            stored = await self.store.hgetall(keys.batch_answers(unit.job_id, index))
            answers = [
                _answer_of(c.expert, c.score, stored.get(c.expert))
                for c in decision.candidates[: decision.k]
            ]
            aggregation = Aggregation(engine.client, engine.registry.snapshot(), decision, spec)
            try:
                out = await aggregation.combine(
                    answers, body, query_text(body["messages"]), stream=False
                )
            except CoeError as err:
                await self._fail(unit.job_id, index, custom_id, err)
                continue
            assert out.response is not None
            response = {**out.response, "usage": out.usage()}
            meta = {"expert": out.expert, **out.meta()}
            await self._succeed(unit.job_id, index, custom_id, response, decision, meta)

    # -- results ------------------------------------------------------------------------
    async def _succeed(
        self,
        job_id: str,
        index: int,
        custom_id: str,
        response: dict[str, Any],
        decision: RouteDecision,
        meta: dict[str, Any],
    ) -> None:
        body = dict(response)
        body["coe"] = {
            "router": decision.router,
            "reason": decision.reason,
            "category": decision.category,
            "decision": decision.to_dict(),
            "upstream_model": body.get("model"),
            "worker": self.name,
            **meta,
        }
        body["model"] = meta["expert"]
        line = result_line(job_id, index, custom_id, body=body)
        if await self.jobs.write_result(job_id, index, line, failed=False):
            self.on_item("completed")

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


def _unit_key(unit: Unit) -> str:
    return f"{unit.expert}:{unit.items[0] if unit.items else unit.start}"


def _answer_of(expert: str, score: float, raw: str | None) -> ExpertAnswer:
    """Rebuild a stored answer; a missing one (its unit was cancelled) counts as failed."""
    if raw is None:
        return ExpertAnswer(
            expert,
            score,
            status="failed",
            error=UpstreamError(f"expert {expert} gave no answer", expert=expert),
        )
    record = json.loads(raw)
    if record["status"] == "ok":
        return ExpertAnswer(expert, score, status="ok", response=record["response"])
    kind = UpstreamTimeout if record.get("code") == 504 else UpstreamError
    return ExpertAnswer(expert, score, status="failed", error=kind(record["error"], expert=expert))
