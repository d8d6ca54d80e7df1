"""Batch jobs as their users see them, in OpenAI's shapes: create one from an uploaded file,
retrieve, list, cancel; once every line has a result, its output and error files. The work
itself — the stream and each phase's state — is `BatchWork`'s (coe/batch/work.py); both
keep every key they touch in `coe.store.keys`; the statuses and their moves are
`coe.batch.status`'s.

A job moves on when it is read (retrieve, list, cancel): `completed` once every line has a
result, `expired` past `expires_at` (unfinished lines answered `batch_expired`), `cancelled`
once every line has a result or `cancel_grace_s` after the cancel (the rest answered
`batch_cancelled`). A finished job's keys and files expire after `retention_s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from coe.batch.files import BatchFiles, list_page
from coe.batch.lifetimes import retain
from coe.batch.lines import bad_line
from coe.batch.status import TERMINAL, JobStatus, Phase, can_move
from coe.batch.units import Unit
from coe.batch.wire import CHAT_URL, FileProblem, ParsedLine, read_batch_file
from coe.batch.work import BatchWork
from coe.config import Settings
from coe.errors import Conflict, InvalidRequest, NotFound
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)

COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
MAX_METADATA_PAIRS = 16
SCAN_CHUNK = 1000  # result lines read per store call when writing files


ITEMS_PER_WRITE = 1000  # lines stored per store call when a batch is created


Spend = Callable[[int], Awaitable[None]]  # charges a batch's lines to its caller's budget


class BatchJobs:
    def __init__(
        self,
        store: Store,
        chunk: int = 64,
        *,
        retention_s: float = 30 * 24 * 3600,
        cancel_grace_s: float = 30.0,
        max_lines: int = 50_000,
    ):
        self.store = store
        self.chunk = chunk
        self.retention_s = retention_s
        self.cancel_grace_s = cancel_grace_s
        self.max_lines = max_lines
        self.work = BatchWork(store, chunk, retention_s)
        self.files = BatchFiles(store, retention_s)

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> BatchJobs:
        return cls(
            store,
            chunk=settings.batch_chunk,
            retention_s=settings.batch_retention_s,
            cancel_grace_s=settings.batch_claim_idle_s,
            max_lines=settings.batch_max_lines,
        )

    # -- create -----------------------------------------------------------------------------
    async def create(
        self,
        input_file_id: str,
        *,
        endpoint: str = CHAT_URL,
        completion_window: str = COMPLETION_WINDOW,
        metadata: dict[str, str] | None = None,
        owner: str = "",
        spend: Spend | None = None,
    ) -> dict[str, Any]:
        """A job over an uploaded file. The file is parsed off the event loop; a file that
        is bad as a whole gives a `failed` job with its problems in `errors`; otherwise
        `spend` is charged one per line before anything is queued."""
        _check_params(endpoint, completion_window, metadata)
        meta = await self.files.meta(input_file_id, None if not owner else owner)
        if meta["purpose"] != "batch":
            raise InvalidRequest(
                f"file {input_file_id!r} has purpose {meta['purpose']!r}; "
                "a batch reads a file uploaded with purpose 'batch'",
                param="input_file_id",
            )
        text = await self.files.text(input_file_id)
        lines, problems, items = await asyncio.to_thread(_prepare, text, self.max_lines)
        if not problems and spend is not None:
            await spend(len(lines))
        job_id = f"batch_{uuid.uuid4().hex[:20]}"
        now = int(time.time())
        job = {
            "status": JobStatus.VALIDATING,
            "total": str(len(lines)),
            "created_at": str(now),
            "expires_at": str(now + WINDOW_S),
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
            "metadata": json.dumps(metadata) if metadata is not None else "",
            "owner": owner,
            "source": meta["filename"],
        }
        await self.store.hset(keys.batch_job(job_id), job)
        await self._index(job_id, owner)
        if problems:
            errors = {"object": "list", "data": [p.to_dict() for p in problems]}
            await self._set(job_id, status=JobStatus.FAILED, failed_at=str(now))
            await self.store.hset(keys.batch_job(job_id), {"errors": json.dumps(errors)})
            await self._retain(job_id)
            return await self.retrieve(job_id)
        fields = list(items.items())
        for start in range(0, len(fields), ITEMS_PER_WRITE):  # small writes keep the loop free
            await self.store.hset(
                keys.batch_items(job_id), dict(fields[start : start + ITEMS_PER_WRITE])
            )
        # a job nobody reads again still goes: these outlive any finished job's retention
        for key in (keys.batch_job(job_id), keys.batch_items(job_id)):
            await self.store.expire(key, WINDOW_S + self.retention_s)
        for ln in lines:  # bad lines are answered now, with their reason
            if ln.body is None:
                await self.work.route_done(job_id, ln.index)
                await self.work.write_result(job_id, ln.index, bad_line(job_id, ln), failed=True)
        await self.work.ensure_group()
        await self.work.enqueue(
            Unit(job_id, Phase.ROUTE, start, min(start + self.chunk, len(lines)))
            for start in range(0, len(lines), self.chunk)
        )
        if await self.store.hget(keys.batch_job(job_id), "status") == JobStatus.VALIDATING:
            await self._set(
                job_id, status=JobStatus.IN_PROGRESS, in_progress_at=str(int(time.time()))
            )  # unless it was cancelled meanwhile
        return await self.retrieve(job_id)

    async def _index(self, job_id: str, owner: str) -> None:
        entry = json.dumps({"t": time.time_ns(), "owner": owner})
        await self.store.hset(keys.BATCH_LISTING, {job_id: entry})
        await self.store.expire(keys.BATCH_LISTING, WINDOW_S + self.retention_s)

    # -- read -------------------------------------------------------------------------------
    async def retrieve(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        """The job as OpenAI's Batch object, moved on first if it is due to (see above)."""
        job = await self._job(job_id, owner)
        job = await self._advance(job_id, job)
        return await self._public(job_id, job)

    async def list(
        self, owner: str | None = None, after: str | None = None, limit: int = 20
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; jobs gone with retention are dropped from the index as met."""
        index = await self.store.hgetall(keys.BATCH_LISTING)
        entries = []
        for job_id, raw in index.items():
            entry = json.loads(raw)
            if owner is None or entry["owner"] == owner:
                entries.append((int(entry["t"]), job_id))

        async def load(job_id: str) -> dict[str, Any] | None:
            try:
                return await self.retrieve(job_id)
            except NotFound:
                await self.store.hdel(keys.BATCH_LISTING, job_id)
                return None

        return await list_page(entries, load, after, limit, True, "batch")

    async def sweep(self) -> int:
        """Move every listed job on as a read would (expiry, finalizing, retention); for a
        periodic task, so jobs nobody reads still finish and expire. Returns how many."""
        seen = 0
        for job_id in list(await self.store.hgetall(keys.BATCH_LISTING)):
            try:
                await self.retrieve(job_id)
            except NotFound:
                await self.store.hdel(keys.BATCH_LISTING, job_id)
            seen += 1
        return seen

    async def results(self, job_id: str, owner: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every result line so far (output and errors together) in input order."""
        job = await self._job(job_id, owner)
        async for _, raw, _ in self._scan(job_id, int(job["total"])):
            yield json.loads(raw)

    async def file_content(self, file_id: str, owner: str | None = None) -> AsyncIterator[str]:
        """A file's text in pieces: an upload as stored, a batch's output (or error) file as
        its successful (or failed) result lines, in input order."""
        meta = await self.files.meta(file_id, owner)
        if "job" not in meta:
            yield await self.files.text(file_id)
            return
        job = await self.store.hgetall(keys.batch_job(meta["job"]))
        if not job:
            raise NotFound(f"the batch behind file {file_id!r} has expired", param="file_id")
        want_failed = meta["kind"] == "error"
        async for _, raw, failed in self._scan(meta["job"], int(job["total"])):
            if failed == want_failed:
                yield raw + "\n"

    # -- cancel -----------------------------------------------------------------------------
    async def cancel(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        job = await self._advance(job_id, await self._job(job_id, owner))
        status = JobStatus(job["status"])
        if not can_move(status, JobStatus.CANCELLING):
            raise Conflict(f"batch {job_id} is already {status}; it cannot be cancelled")
        now = time.time()
        await self._set(
            job_id,
            status=JobStatus.CANCELLING,
            cancelling_at=str(int(now)),
            cancel_by=str(now + self.cancel_grace_s),
        )
        return await self.retrieve(job_id)

    # -- moving a job on ------------------------------------------------------------------
    async def _advance(self, job_id: str, job: dict[str, str]) -> dict[str, str]:
        status = JobStatus(job["status"])
        if status in TERMINAL:
            return job
        now = time.time()
        total = int(job["total"])
        done = await self.store.hlen(keys.batch_results(job_id))
        if status == JobStatus.FINALIZING:
            return await self._finalize(job_id, job, JobStatus(job["final"]))
        if status == JobStatus.CANCELLING:
            if done < total and now < float(job["cancel_by"]):
                return job
            await self._answer_rest(job_id, total, "batch_cancelled", "the batch was cancelled")
            return await self._finalize(job_id, job, JobStatus.CANCELLED)
        if status == JobStatus.IN_PROGRESS and done >= total:
            return await self._finalize(job_id, job, JobStatus.COMPLETED)
        if now >= int(job["expires_at"]):  # in progress, or a validation that never ended
            message = "the batch did not finish within its 24h completion window"
            await self._answer_rest(job_id, total, "batch_expired", message)
            return await self._finalize(job_id, job, JobStatus.EXPIRED)
        return job

    async def _answer_rest(self, job_id: str, total: int, code: str, message: str) -> None:
        """Give every line with no result yet an error result (`code`)."""
        for start in range(0, total, SCAN_CHUNK):
            chunk = range(start, min(start + SCAN_CHUNK, total))
            await self.work.fail_open(job_id, chunk, (code, message))

    async def _finalize(self, job_id: str, job: dict[str, str], final: JobStatus) -> dict[str, str]:
        """Write the output and error files, then take the final status; one reader does it
        (under a lock that expires if it dies), others see `finalizing` meanwhile."""
        lock = keys.batch_flag(job_id, "finalize-lock")
        if not await self.store.set_if_absent(lock, "1", ttl_s=120):
            return {**job, "status": JobStatus.FINALIZING}
        now = str(int(time.time()))
        await self._set(
            job_id,
            status=JobStatus.FINALIZING,
            final=final,
            finalizing_at=job.get("finalizing_at") or now,
        )
        sizes = {False: 0, True: 0}
        async for _, raw, failed in self._scan(job_id, int(job["total"])):
            sizes[failed] += len(raw.encode()) + 1
        tag = job_id.removeprefix("batch_")
        fields: dict[str, str] = {}
        for failed, kind, field in (
            (False, "output", "output_file_id"),
            (True, "error", "error_file_id"),
        ):
            if sizes[failed]:
                file_id = f"file-{tag}-{kind}"
                await self.files.add_output(file_id, job_id, kind, sizes[failed], job["owner"])
                fields[field] = file_id
        at = {JobStatus.COMPLETED: "completed_at", JobStatus.EXPIRED: "expired_at"}
        fields[at.get(final, "cancelled_at")] = now
        await self._set(job_id, status=final, **fields)
        await self._retain(job_id)
        await self.store.delete(lock)
        return await self._job(job_id)

    async def _retain(self, job_id: str) -> None:
        """A finished job's keys (whoever wrote them) expire after the retention period;
        its short-lived liveness key keeps its own, shorter, time to live. Keys a late unit
        creates afterwards are bounded by the worker (`BatchWork.bound_if_finished`)."""
        await retain(self.store, job_id, self.retention_s)

    # -- helpers ----------------------------------------------------------------------------
    async def _job(self, job_id: str, owner: str | None = None) -> dict[str, str]:
        job = await self.store.hgetall(keys.batch_job(job_id))
        if not job or (owner is not None and job.get("owner", "") != owner):
            raise NotFound(f"no batch {job_id!r}", param="batch_id")
        return job

    async def _set(self, job_id: str, **fields: str) -> None:
        await self.store.hset(keys.batch_job(job_id), {k: str(v) for k, v in fields.items()})

    async def _scan(self, job_id: str, total: int) -> AsyncIterator[tuple[int, str, bool]]:
        """(index, stored result line, failed) for every line with a result, in input order,
        read a chunk at a time."""
        for start in range(0, total, SCAN_CHUNK):
            fields = [str(i) for i in range(start, min(start + SCAN_CHUNK, total))]
            results = await self.store.hmget(keys.batch_results(job_id), fields)
            failed = await self.store.hmget(keys.batch_failed(job_id), fields)
            for field, raw, bad in zip(fields, results, failed, strict=True):
                if raw is not None:
                    yield int(field), raw, bad is not None

    async def _public(self, job_id: str, job: dict[str, str]) -> dict[str, Any]:
        total = int(job["total"])
        done = await self.store.hlen(keys.batch_results(job_id))
        failed = await self.store.hlen(keys.batch_failed(job_id))

        def at(name: str) -> int | None:
            return int(job[name]) if job.get(name) else None

        return {
            "id": job_id,
            "object": "batch",
            "endpoint": job["endpoint"],
            "errors": json.loads(job["errors"]) if job.get("errors") else None,
            "input_file_id": job["input_file_id"],
            "completion_window": job["completion_window"],
            "status": job["status"],
            "output_file_id": job.get("output_file_id") or None,
            "error_file_id": job.get("error_file_id") or None,
            "created_at": int(job["created_at"]),
            "in_progress_at": at("in_progress_at"),
            "expires_at": at("expires_at"),
            "finalizing_at": at("finalizing_at"),
            "completed_at": at("completed_at"),
            "failed_at": at("failed_at"),
            "expired_at": at("expired_at"),
            "cancelling_at": at("cancelling_at"),
            "cancelled_at": at("cancelled_at"),
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
            "metadata": json.loads(job["metadata"]) if job.get("metadata") else None,
        }


def _check_params(endpoint: str, window: str, metadata: dict[str, str] | None) -> None:
    if endpoint != CHAT_URL:
        raise InvalidRequest(
            f"endpoint {endpoint!r} is not supported; batches run {CHAT_URL}", param="endpoint"
        )
    if window != COMPLETION_WINDOW:
        raise InvalidRequest(
            f"completion_window {window!r} is not supported; use {COMPLETION_WINDOW!r}",
            param="completion_window",
        )
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequest(
                "metadata keys are at most 64 characters and values at most 512",
                param="metadata",
            )


def _prepare(
    text: str, max_lines: int
) -> tuple[list[ParsedLine], list[FileProblem], dict[str, str]]:
    """The parse, and the items as stored: CPU work for a worker thread, not the loop."""
    lines, problems = read_batch_file(text, max_lines)
    items = {
        str(ln.index): json.dumps({"custom_id": ln.custom_id, "body": ln.body}) for ln in lines
    }
    return lines, problems, items
