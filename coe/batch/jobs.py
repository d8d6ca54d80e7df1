"""Batch jobs in the store: create, status, results, cancel. Every result is written once.

Results are keyed by input line and written with HSETNX, so a unit re-run after a
worker crash can never produce a second result for a line.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from coe.batch.wire import ParsedLine, result_line
from coe.errors import Conflict, NotFound
from coe.store import keys
from coe.store.base import Store


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


TERMINAL = {JobStatus.COMPLETED, JobStatus.CANCELLED}


@dataclass(frozen=True)
class Unit:
    """One piece of work on the stream: route a range of lines, or run one expert's lines."""

    job_id: str
    phase: str  # "route" | "run"
    start: int = 0
    end: int = 0
    expert: str = ""
    items: tuple[int, ...] = ()

    def fields(self) -> dict[str, str]:
        return {
            "job": self.job_id,
            "phase": self.phase,
            "start": str(self.start),
            "end": str(self.end),
            "expert": self.expert,
            "items": ",".join(map(str, self.items)),
        }

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Unit:
        items = tuple(int(i) for i in fields.get("items", "").split(",") if i)
        return cls(
            job_id=fields["job"],
            phase=fields["phase"],
            start=int(fields["start"]),
            end=int(fields["end"]),
            expert=fields.get("expert", ""),
            items=items,
        )


class BatchJobs:
    def __init__(self, store: Store, chunk: int = 64):
        self.store = store
        self.chunk = chunk

    async def ensure_group(self) -> None:
        await self.store.xgroup_create(keys.BATCH_STREAM, keys.BATCH_GROUP)

    async def create(self, lines: list[ParsedLine], source: str = "") -> dict[str, Any]:
        job_id = f"batch_{uuid.uuid4().hex[:20]}"
        now = int(time.time())
        await self.store.hset(
            keys.batch_job(job_id),
            {
                "status": JobStatus.QUEUED,
                "total": str(len(lines)),
                "created_at": str(now),
                "source": source,
            },
        )
        await self.store.hset(
            keys.batch_items(job_id),
            {
                str(ln.index): json.dumps({"custom_id": ln.custom_id, "body": ln.body})
                for ln in lines
            },
        )
        for ln in lines:  # bad lines are answered now, with their reason
            if ln.body is None:
                await self.settle(job_id, ln.index)
                await self.write_result(
                    job_id,
                    ln.index,
                    result_line(
                        job_id, ln.index, ln.custom_id, error=("invalid_request", ln.error or "")
                    ),
                    failed=True,
                )
        await self.ensure_group()
        for start in range(0, len(lines), self.chunk):
            end = min(start + self.chunk, len(lines))
            await self.store.xadd(keys.BATCH_STREAM, Unit(job_id, "route", start, end).fields())
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

    async def is_cancelled(self, job_id: str) -> bool:
        return await self.store.hget(keys.batch_job(job_id), "status") == JobStatus.CANCELLED

    async def item(self, job_id: str, index: int) -> tuple[str, dict[str, Any] | None]:
        raw = await self.store.hget(keys.batch_items(job_id), str(index))
        if raw is None:
            raise NotFound(f"batch {job_id} has no line {index}")
        data = json.loads(raw)
        return data["custom_id"], data["body"]

    async def has_result(self, job_id: str, index: int) -> bool:
        return await self.store.hget(keys.batch_results(job_id), str(index)) is not None

    async def write_result(
        self, job_id: str, index: int, line: dict[str, Any], failed: bool
    ) -> bool:
        """Record a line's result unless one exists; True when this call wrote it."""
        wrote = await self.store.hsetnx(keys.batch_results(job_id), str(index), json.dumps(line))
        if wrote and failed:
            await self.store.hsetnx(keys.batch_failed(job_id), str(index), "1")
        return wrote

    async def settle(self, job_id: str, index: int) -> None:
        """Mark a line as routed or finished with an error (the route phase is done with it)."""
        await self.store.hsetnx(keys.batch_settled(job_id), str(index), "1")

    async def all_settled(self, job_id: str, total: int) -> bool:
        return await self.store.hlen(keys.batch_settled(job_id)) >= total

    async def total(self, job_id: str) -> int:
        raw = await self.store.hget(keys.batch_job(job_id), "total")
        if raw is None:
            raise NotFound(f"no batch job {job_id!r}")
        return int(raw)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        current = await self.status(job_id)
        if current["status"] in TERMINAL:
            raise Conflict(f"batch {job_id} is already {current['status']}")
        await self.store.hset(
            keys.batch_job(job_id),
            {"status": JobStatus.CANCELLED, "cancelled_at": str(int(time.time()))},
        )
        total = current["request_counts"]["total"]
        for index in range(total):
            if not await self.has_result(job_id, index):
                custom_id, _ = await self.item(job_id, index)
                await self.write_result(
                    job_id,
                    index,
                    result_line(
                        job_id, index, custom_id, error=("cancelled", "the batch was cancelled")
                    ),
                    failed=True,
                )
        return await self.status(job_id)

    async def results(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Result lines in input order; lines still pending are not included."""
        status = await self.status(job_id)
        stored = await self.store.hgetall(keys.batch_results(job_id))
        for index in range(status["request_counts"]["total"]):
            raw = stored.get(str(index))
            if raw is not None:
                yield json.loads(raw)

    async def enqueue(self, units: Iterable[Unit]) -> None:
        for unit in units:
            await self.store.xadd(keys.BATCH_STREAM, unit.fields())
