"""Offline grouping, as the batch worker does it: a job's lines run grouped by expert (one
residency each), aggregates last, every answer kept in input order."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence

from coe.batch.units import Unit
from coe.batch.work import BatchWork
from coe.routing.decision import Candidate, RouteDecision
from coe.store import keys
from coe.store.embedded import EmbeddedStore
from tests.pool.fakes import FakeController, checked_pool


async def routed_job(routes: Sequence[Sequence[str]]) -> tuple[EmbeddedStore, list[Unit]]:
    """A job whose line i is routed to the experts `routes[i]`, and the run units it queued."""
    store = EmbeddedStore()
    work = BatchWork(store, chunk=len(routes))
    items = {str(i): json.dumps({"custom_id": f"q{i}", "body": {}}) for i in range(len(routes))}
    await store.hset(keys.batch_job("b1"), {"status": "in_progress", "total": str(len(items))})
    await store.hset(keys.batch_items("b1"), items)
    await work.ensure_group()
    for i, experts in enumerate(routes):
        decision = RouteDecision(
            tuple(Candidate(e, 1.0) for e in experts), "r", "test", k=len(experts)
        )
        await work.save_route("b1", i, {"decision": decision.to_dict()})
    assert await work.queue_runs_when_routed("b1", "w", ttl_s=60) is not None
    backlog = await store.xbacklog(keys.BATCH_STREAM, keys.BATCH_GROUP)
    return store, [Unit.parse(fields) for _, fields in backlog]


async def test_runs_group_by_expert_largest_group_first_aggregates_last() -> None:
    routes = [["b"], ["a", "c"], ["a"], ["b"], ["c"], ["a"]]  # line 1 is aggregated
    _, units = await routed_job(routes)
    assert [u.phase for u in units] == ["run", "run", "run"]  # no aggregate before the runs
    assert [u.expert for u in units] == ["a", "b", "c"]
    assert [u.items for u in units] == [(1, 2, 5), (0, 3), (1, 4)]


async def test_grouped_run_loads_each_expert_once_and_beats_query_order() -> None:
    rng = random.Random(3)
    experts = ["a", "b", "c"]
    pairs = [(f"q{i}", rng.choice(experts)) for i in range(30)]
    _, units = await routed_job([[e] for _, e in pairs])

    async def answer(query: str, expert: str) -> str:
        return f"{expert}:{query}"

    grouped = FakeController(delay_s=0.001)
    pool = checked_pool(grouped, experts, 1)
    await pool.start()
    answers: dict[int, str] = {}
    try:
        for unit in units:  # in the order the workers take them
            for index in unit.items:
                async with pool.admit(unit.expert):
                    answers[index] = await answer(pairs[index][0], unit.expert)
    finally:
        await pool.close()
    results = [answers[i] for i in range(len(pairs))]
    assert results == [f"{e}:{q}" for q, e in pairs]
    assert sorted(grouped.loads()) == experts  # loads = distinct experts

    ordered = FakeController(delay_s=0.001)
    pool = checked_pool(ordered, experts, 1)
    await pool.start()
    try:
        in_order = []
        for query, expert in pairs:  # the baseline: one line after another
            async with pool.admit(expert):
                in_order.append(await answer(query, expert))
        assert in_order == results
    finally:
        await pool.close()
    changes = 1 + sum(1 for (_, x), (_, y) in itertools.pairwise(pairs) if x != y)
    assert len(ordered.loads()) == changes > len(grouped.loads())
