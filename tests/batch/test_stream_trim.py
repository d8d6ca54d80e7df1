"""The work stream holds only open work: the sweeper trims units a crash left acknowledged
but undeleted, on real Redis, and never a unit still waiting or held by a worker."""

from __future__ import annotations

import os

from coe.batch.work import BatchWork
from coe.batch.worker import BatchWorker
from coe.pipeline import Engine
from coe.store import keys
from tests.support.redis import isolated_redis_store

REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def no_engine() -> Engine:
    raise AssertionError("the sweep runs no unit")


async def test_sweeper_trims_units_acknowledged_but_never_deleted() -> None:
    async with isolated_redis_store(REDIS_URL, "trim") as store:
        work = BatchWork(store)
        await work.ensure_group()
        ids = [
            await store.xadd(keys.BATCH_STREAM, {"job": f"j{i}", "phase": "route"})
            for i in range(4)
        ]
        held = await store.xreadgroup(keys.BATCH_STREAM, keys.BATCH_GROUP, "w1", count=3)
        assert [i for i, _ in held] == ids[:3]
        # a worker acknowledged two units and died before deleting them; the third is held
        await store.xack(keys.BATCH_STREAM, keys.BATCH_GROUP, ids[0], ids[1])

        await BatchWorker(work, no_engine, name="sweeper").sweep()

        assert await store.xlen(keys.BATCH_STREAM) == 2
        backlog = await store.xbacklog(keys.BATCH_STREAM, keys.BATCH_GROUP)
        assert [i for i, _ in backlog] == [ids[3], ids[2]]  # waiting, then held
