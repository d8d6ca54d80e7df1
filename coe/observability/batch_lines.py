"""`coe_batch_job_lines`: each recent batch job's lines (total, completed, failed).

Scrapes are synchronous (the gateway renders in its event loop, a worker in a thread) and
the store is async, so a background task reads the jobs every few seconds and a scrape
reads its last snapshot. Jobs shown: those not finished, and those finished within the
last hour; at most `max_jobs`, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coe.errors import StoreUnavailable

log = logging.getLogger(__name__)

REFRESH_S = 5.0
RECENT_S = 3600.0  # finished jobs stay shown this long
MAX_JOBS = 50
SCANNED = 200  # newest jobs read per refresh, to find the shown ones
FINISHED = ("completed", "failed", "expired", "cancelled")
FINISHED_AT = ("completed_at", "failed_at", "expired_at", "cancelled_at")
COUNTS = ("total", "completed", "failed")
Row = tuple[str, str, float]  # job, status, lines


class JobSource(Protocol):
    """`coe.batch.BatchJobs`: a page of jobs, newest first, as OpenAI Batch objects."""

    async def list(
        self, owner: str | None = None, after: str | None = None, limit: int = 20
    ) -> tuple[list[dict[str, Any]], bool]: ...


def shown(jobs: Sequence[Mapping[str, Any]], now: float, max_jobs: int = MAX_JOBS) -> list[Row]:
    """The gauge's samples for the jobs worth showing (see the module's doc)."""
    rows: list[Row] = []
    kept = 0
    for job in jobs:
        if kept == max_jobs:
            break
        if job.get("status") in FINISHED:
            ended = max((job.get(f) or 0 for f in FINISHED_AT), default=0)
            if now - ended > RECENT_S:
                continue
        counts = job.get("request_counts") or {}
        rows += [(str(job["id"]), status, float(counts.get(status, 0))) for status in COUNTS]
        kept += 1
    return rows


class JobLines(Collector):
    """The collector, and the snapshot it exports; `run` keeps the snapshot fresh."""

    def __init__(self, jobs: JobSource, every_s: float = REFRESH_S):
        self.jobs = jobs
        self.every_s = every_s
        self.rows: tuple[Row, ...] = ()  # replaced whole: a scrape in a thread reads it safely

    async def refresh(self) -> None:
        page, _ = await self.jobs.list(limit=SCANNED)
        self.rows = tuple(shown(page, time.time()))

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every `every_s` until `stop`; a store outage keeps the last snapshot."""
        while not stop.is_set():
            try:
                await self.refresh()
            except StoreUnavailable as err:
                log.debug("batch job lines not refreshed: %s", err.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every_s):
                    await stop.wait()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "coe_batch_job_lines",
            "Lines of each batch job not finished or finished within the hour, by status "
            "(total, completed, failed)",
            labels=["batch", "status"],
        )
        for job, status, value in self.rows:
            family.add_metric([job, status], value)
        yield family
