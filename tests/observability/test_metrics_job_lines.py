"""`coe_batch_job_lines` shows unfinished jobs and those finished within the hour, at most
50, from a snapshot that a store outage leaves as it was."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from coe.errors import StoreUnavailable
from coe.observability.batch_lines import MAX_JOBS, JobLines
from tests.observability.test_metrics_move import Scrape


def job(i: int, status: str, **stamps: float) -> dict[str, Any]:
    counts = {"total": 10, "completed": i, "failed": 1}
    return {"id": f"batch_{i}", "status": status, "request_counts": counts, **stamps}


class Jobs:
    """A page of jobs, newest first, as `BatchJobs.list` gives them."""

    def __init__(self, jobs: list[dict[str, Any]]):
        self.jobs = jobs
        self.down = False
        self.refused = 0
        self.refused_thrice = asyncio.Event()

    async def list(
        self, owner: str | None = None, after: str | None = None, limit: int = 20
    ) -> tuple[list[dict[str, Any]], bool]:
        if self.down:
            self.refused += 1
            if self.refused == 3:
                self.refused_thrice.set()
            raise StoreUnavailable("the store is down")
        return self.jobs[:limit], len(self.jobs) > limit


def exported(lines: JobLines) -> Scrape:
    registry = CollectorRegistry()
    registry.register(lines)
    return Scrape(generate_latest(registry).decode())


async def test_recent_and_unfinished_jobs_only() -> None:
    now = time.time()
    source = Jobs(
        [
            job(1, "in_progress"),
            job(2, "completed", completed_at=now - 60),
            job(3, "completed", completed_at=now - 7200),  # finished too long ago
            job(4, "cancelled", cancelled_at=now - 30),
            job(5, "finalizing"),
        ]
    )
    lines = JobLines(source)
    await lines.refresh()
    scrape = exported(lines)
    shown = {s.labels["batch"] for s in scrape.samples("coe_batch_job_lines")}
    assert shown == {"batch_1", "batch_2", "batch_4", "batch_5"}
    assert scrape.value("coe_batch_job_lines", batch="batch_2", status="completed") == 2
    assert scrape.value("coe_batch_job_lines", batch="batch_2", status="failed") == 1
    assert scrape.value("coe_batch_job_lines", batch="batch_2", status="total") == 10


async def test_at_most_fifty_jobs_and_an_outage_keeps_the_last_snapshot() -> None:
    source = Jobs([job(i, "in_progress") for i in range(MAX_JOBS + 20)])
    lines = JobLines(source, every_s=0.01)
    await lines.refresh()
    shown = {s.labels["batch"] for s in exported(lines).samples("coe_batch_job_lines")}
    assert shown == {f"batch_{i}" for i in range(MAX_JOBS)}  # the newest
    source.down = True
    stop = asyncio.Event()
    running = asyncio.create_task(lines.run(stop))
    await asyncio.wait_for(source.refused_thrice.wait(), 10)  # it fails, and goes on
    stop.set()
    await running
    assert len(exported(lines).samples("coe_batch_job_lines")) == 3 * MAX_JOBS
