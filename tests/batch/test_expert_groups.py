"""Offline grouping: one residency per expert, aggregator last, results in input order."""

from __future__ import annotations

import itertools
import random

from coe.pool import OfflineSchedule, run_in_order
from tests.pool.fakes import FakeController, checked_pool


def test_plan_groups_by_expert_resident_first_aggregator_last() -> None:
    pairs = [("q1", "b"), ("q2", "agg"), ("q3", "a"), ("q4", "b"), ("q5", "c"), ("q6", "a")]
    plan = OfflineSchedule.plan(pairs, resident={"a"}, last={"agg"})
    assert plan.experts == ["a", "b", "c", "agg"]
    assert [g.indices for g in plan.groups] == [(2, 5), (0, 3), (4,), (1,)]


async def test_grouped_run_loads_each_expert_once_and_beats_query_order() -> None:
    rng = random.Random(3)
    experts = ["a", "b", "c"]
    pairs = [(f"q{i}", rng.choice(experts)) for i in range(30)]

    async def answer(query: str, expert: str) -> str:
        return f"{expert}:{query}"

    grouped = FakeController(delay_s=0.001)
    pool = checked_pool(grouped, experts, 1)
    await pool.start()
    try:
        plan = OfflineSchedule.plan(pairs, resident=pool.resident())
        results = await plan.run(pool, answer)
    finally:
        await pool.close()
    assert results == [f"{e}:{q}" for q, e in pairs]
    assert sorted(grouped.loads()) == experts  # loads = distinct experts

    ordered = FakeController(delay_s=0.001)
    pool = checked_pool(ordered, experts, 1)
    await pool.start()
    try:
        assert await run_in_order(pool, pairs, answer) == results
    finally:
        await pool.close()
    changes = 1 + sum(1 for (_, x), (_, y) in itertools.pairwise(pairs) if x != y)
    assert len(ordered.loads()) == changes > len(grouped.loads())
