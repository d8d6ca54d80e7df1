"""The local batch engine (`coe batch run`, the default): the Redis engine's workers in this
process, on the embedded store, with a progress bar; a front, as it builds a runtime."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from pydantic import Field

from coe.batch.engines import BatchEngine, EngineOptions
from coe.batch.status import TERMINAL, JobStatus
from coe.config import Settings
from coe.errors import InvalidRequest
from coe.experts.schema import CoeConfig

# A job the local run waits for (a failed one stops it at once).
FINISHED = TERMINAL - {JobStatus.FAILED}


class LocalOptions(EngineOptions):
    workers: int = Field(2, description="concurrent work units")


class LocalEngine(BatchEngine[LocalOptions]):
    name = "local"
    summary = "this process, embedded store"
    Options = LocalOptions
    settings_overrides = {"redis_url": None}

    def run(
        self,
        inputs: Sequence[str],
        output: str,
        settings: Settings,
        config: CoeConfig | None,
        options: LocalOptions,
    ) -> dict[str, Any]:
        if len(inputs) != 1 or not Path(inputs[0]).is_file():
            raise InvalidRequest("the local engine takes one JSONL file (--engine ray takes more)")
        return asyncio.run(
            run_local(settings, Path(inputs[0]), Path(output), options.workers, config)
        )


async def run_local(
    settings: Settings, file: Path, output: Path, workers: int, config: CoeConfig | None = None
) -> dict[str, int]:
    """One JSONL file through `workers` batch workers in this process; the output file."""
    from coe.batch import decode_upload
    from coe.runtime import build_runtime
    from coe.supervisor import batch_worker

    runtime = await build_runtime(settings, config, serve_admin=False)
    jobs = runtime.batch_jobs
    try:
        content = await asyncio.to_thread(file.read_bytes)
        text = await asyncio.to_thread(
            decode_upload, content, settings.batch_max_bytes, settings.batch_max_lines
        )
        uploaded = await jobs.files.create(text, len(content), file.name)
        job = await jobs.create(uploaded["id"])
        if job["status"] == JobStatus.FAILED:
            raise InvalidRequest(job["errors"]["data"][0]["message"])
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(batch_worker(runtime, f"local-{i}").run(stop))
            for i in range(workers)
        ]
        total = job["request_counts"]["total"]
        with click.progressbar(length=total, label=f"{file.name}", file=sys.stderr) as bar:
            done = 0
            while job["status"] not in FINISHED:
                await asyncio.sleep(0.2)
                job = await jobs.retrieve(job["id"])
                counts = job["request_counts"]
                now = counts["completed"] + counts["failed"]
                bar.update(now - done)
                done = now
        stop.set()
        await asyncio.gather(*tasks)
        out_lines = [json.dumps(line, ensure_ascii=False) async for line in jobs.results(job["id"])]
        await asyncio.to_thread(output.write_text, "\n".join(out_lines) + "\n")
        final: dict[str, int] = job["request_counts"]
        return final
    finally:
        await runtime.close()
