"""Offline scheduling: run a batch's (query, expert) pairs grouped by expert, one residency each.

Experts already resident go first, then the rest by first appearance, aggregators last;
the number of loads is the number of distinct experts not resident at the start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from coe.pool.pool import Pool

Q = TypeVar("Q")
R = TypeVar("R")


@dataclass(frozen=True)
class Group:
    expert: str
    indices: tuple[int, ...]  # positions in the input pairs


class OfflineSchedule(Generic[Q]):
    """`plan` orders the work; `run` executes it against a pool, results in input order."""

    def __init__(self, pairs: Sequence[tuple[Q, str]], groups: Sequence[Group]):
        self.pairs = list(pairs)
        self.groups = list(groups)

    @property
    def experts(self) -> list[str]:
        return [g.expert for g in self.groups]

    @classmethod
    def plan(
        cls,
        pairs: Sequence[tuple[Q, str]],
        resident: Collection[str] = (),
        last: Collection[str] = (),
    ) -> OfflineSchedule[Q]:
        """Group by expert: resident experts first, `last` (aggregators) at the end."""
        order: dict[str, list[int]] = {}
        for i, (_, expert) in enumerate(pairs):
            order.setdefault(expert, []).append(i)

        def rank(item: tuple[int, str]) -> tuple[int, int]:
            pos, expert = item
            return (2 if expert in last else 0 if expert in resident else 1, pos)

        names = [e for _, e in sorted(enumerate(order), key=rank)]
        return cls(pairs, [Group(e, tuple(order[e])) for e in names])

    async def run(
        self,
        pool: Pool,
        call: Callable[[Q, str], Awaitable[R]],
        concurrency: int = 8,
    ) -> list[R]:
        """Each group inside one residency: its calls run together (up to `concurrency`)."""
        results: dict[int, R] = {}
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int, expert: str) -> None:
            async with gate, pool.admit(expert):
                results[index] = await call(self.pairs[index][0], expert)

        for group in self.groups:
            async with asyncio.TaskGroup() as tasks:
                for index in group.indices:
                    tasks.create_task(one(index, group.expert))
        return [results[i] for i in range(len(self.pairs))]


async def run_in_order(
    pool: Pool, pairs: Sequence[tuple[Q, str]], call: Callable[[Q, str], Awaitable[R]]
) -> list[R]:
    """The baseline: one pair after another, in the order given (a swap at every change)."""
    out: list[R] = []
    for query, expert in pairs:
        async with pool.admit(expert):
            out.append(await call(query, expert))
    return out
