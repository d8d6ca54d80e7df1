"""Batch jobs as their users see them: create, status, results, cancel. The work itself —
the stream and each phase's state — is `BatchWork`'s (coe/batch/work.py); both keep every
key they touch in `coe.store.keys`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

from coe.batch.units import Unit
from coe.batch.wire import ParsedLine, result_line
from coe.batch.work import BatchWork
from coe.errors import Conflict, NotFound
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


TERMINAL = {JobStatus.COMPLETED, JobStatus.CANCELLED}


class BatchJobs:
    def __init__(self, store: Store, chunk: int = 64):
        self.store = store
        self.chunk = chunk
        self.work = BatchWork(store, chunk)

    # -- jobs ---------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        await self.store.xgroup_create(keys.BATCH_STREAM, keys.BATCH_GROUP)

    async def create(self, lines: list[ParsedLine], source: str = "") -> dict[str, Any]:
        job_id = f"batch_{uuid.uuid4().hex[:20]}"
        now = int(time.time())
        job = {"status": JobStatus.QUEUED, "total": str(len(lines)), "created_at": str(now)}
        await self.store.hset(keys.batch_job(job_id), {**job, "source": source})
        await self.store.hset(
            keys.batch_items(job_id),
            {
                str(ln.index): json.dumps({"custom_id": ln.custom_id, "body": ln.body})
                for ln in lines
            },
        )
        for ln in lines:  # bad lines are answered now, with their reason
            if ln.body is None:
                await self.work.settle(job_id, ln.index)
                error = ("invalid_request", ln.error or "")
                line = result_line(job_id, ln.index, ln.custom_id, error=error)
                await self.work.write_result(job_id, ln.index, line, failed=True)
        await self.work.ensure_group()
        await self.work.enqueue(
            Unit(job_id, "route", start, min(start + self.chunk, len(lines)))
            for start in range(0, len(lines), self.chunk)
        )
        await self.store.hset(keys.BATCH_JOBS, {job_id: str(now)})
        return await self.status(job_id)

    async def status(self, job_id: str) -> dict[str, Any]:
        job = await self.store.hgetall(keys.batch_job(job_id))
        if not job:
            raise NotFound(f"no batch job {job_id!r}")
        total = int(job["total"])
        done = await self.store.hlen(keys.batch_results(job_id))
        failed = await self.store.hlen(keys.batch_failed(job_id))
        status = JobStatus(job["status"])
        if status not in TERMINAL and done >= total:
            status = JobStatus.COMPLETED
            await self.store.hset(
                keys.batch_job(job_id), {"status": status, "completed_at": str(int(time.time()))}
            )
            job = await self.store.hgetall(keys.batch_job(job_id))
        elif status == JobStatus.QUEUED and done > 0:
            status = JobStatus.IN_PROGRESS
        return {
            "id": job_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "status": str(status),
            "created_at": int(job["created_at"]),
            "completed_at": int(job["completed_at"]) if "completed_at" in job else None,
            "cancelled_at": int(job["cancelled_at"]) if "cancelled_at" in job else None,
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
        }

    async def cancel(self, job_id: str) -> dict[str, Any]:
        current = await self.status(job_id)
        if current["status"] in TERMINAL:
            raise Conflict(f"batch {job_id} is already {current['status']}")
        await self.store.hset(
            keys.batch_job(job_id),
            {"status": JobStatus.CANCELLED, "cancelled_at": str(int(time.time()))},
        )
        total = current["request_counts"]["total"]
        fields = [str(i) for i in range(total)]
        results = await self.store.hmget(keys.batch_results(job_id), fields)
        items = await self.store.hmget(keys.batch_items(job_id), fields)
        for index, (result, raw) in enumerate(zip(results, items, strict=True)):
            if result is None and raw is not None:
                custom_id = json.loads(raw)["custom_id"]
                error = ("cancelled", "the batch was cancelled")
                line = result_line(job_id, index, custom_id, error=error)
                await self.work.write_result(job_id, index, line, failed=True)
        return await self.status(job_id)

    async def results(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Result lines in input order; lines still pending are not included."""
        status = await self.status(job_id)
        stored = await self.store.hgetall(keys.batch_results(job_id))
        for index in range(status["request_counts"]["total"]):
            raw = stored.get(str(index))
            if raw is not None:
                yield json.loads(raw)
