"""How long a batch job's keys live, so none outlives its job.

While a job runs, its keys are kept until its completion window ends plus the retention
period (`expires_at + retention_s`), as its job hash and items are from the start; once it
is finished, `retention_s`. A unit that writes after its job finished (a worker that was
still on it) puts the bound back on what it created; keys whose job hash is gone are
orphans and are deleted.
"""

from __future__ import annotations

import time

from coe.batch.status import TERMINAL
from coe.store import keys
from coe.store.base import Store


async def job_keys(store: Store, job_id: str) -> list[str]:
    """The job's keys but its short-lived liveness key (which keeps its own time to live)."""
    found = await store.keys(keys.batch_keys_prefix(job_id))
    return [k for k in [keys.batch_job(job_id), *found] if k != keys.batch_alive(job_id)]


async def retain(store: Store, job_id: str, ttl_s: float) -> None:
    for key in await job_keys(store, job_id):
        await store.expire(key, ttl_s)


async def bound_job(store: Store, job_id: str, retention_s: float) -> None:
    """Give every key of the job the time to live its state calls for (see above)."""
    job = await store.hgetall(keys.batch_job(job_id))
    if not job:
        orphans = await job_keys(store, job_id)
        if orphans:
            await store.delete(*orphans)
        return
    if job.get("status") in TERMINAL:
        await retain(store, job_id, retention_s)
        return
    left_s = max(float(job.get("expires_at") or 0) - time.time(), 0.0)
    await retain(store, job_id, left_s + retention_s)
