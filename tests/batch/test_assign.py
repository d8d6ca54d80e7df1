"""The job-level assign step: called once per job, after every line is routed and before
any is answered, and the plans it gives are the ones answered (the Redis engine's workers,
in process on the embedded store)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from coe.batch.assign import Assigner, KeepRouted, Routed
from coe.batch.worker import BatchWorker
from coe.config import Settings
from coe.pipeline import Plan
from coe.routing.decision import Candidate
from coe.runtime import build_runtime
from coe.store import keys
from coe.store.base import Store
from coe.testing import FakeUpstream

REPO = Path(__file__).resolve().parents[2]
LINES = 6


class OddLinesToE1(Assigner):
    """Sends the odd lines to e1 (routing sends every line to e0), and records what the
    store held when it was called."""

    name = "odd-to-e1"

    def __init__(self, store: Store):
        self.store = store
        self.calls: list[dict[str, int]] = []

    async def assign(self, job_id: str, lines: Sequence[Routed]) -> Mapping[int, Plan]:
        self.calls.append(
            {
                "lines": len(lines),
                "routes": await self.store.hlen(keys.batch_routes(job_id)),
                "results": await self.store.hlen(keys.batch_results(job_id)),
            }
        )
        out = {}
        for line in lines:
            if line.index % 2:
                decision = replace(line.plan.decision, candidates=(Candidate("e1", 1.0),))
                out[line.index] = replace(line.plan, decision=decision)
        return out


def config(urls: list[str]) -> dict[str, Any]:
    return {
        "experts": [
            {"name": f"e{i}", "model": f"m{i}", "endpoints": [u], "limits": {"timeout_s": 10}}
            for i, u in enumerate(urls)
        ],
        "default_expert": "e0",
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }


def batch_file() -> str:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "coe/auto",
                    "messages": [{"role": "user", "content": f"question {i}"}],
                },
            }
        )
        for i in range(LINES)
    )


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    ups = [FakeUpstream(f"u{i}").start() for i in range(2)]
    yield ups
    for u in ups:
        u.stop()


async def run_job(
    tmp_path: Path, upstreams: list[FakeUpstream], make: Callable[[Store], Assigner] | None
) -> tuple[list[dict[str, Any]], Assigner | None]:
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(yaml.safe_dump(config([u.base_url for u in upstreams])))
    settings = Settings(redis_url=None, experts_file=cfg, batch_worker=False, batch_chunk=2)
    runtime = await build_runtime(settings, serve_admin=False)
    jobs = runtime.batch_jobs
    chosen = make(runtime.store) if make is not None else None
    try:
        text = batch_file()
        uploaded = await jobs.files.create(text, len(text), "in.jsonl")
        job = await jobs.create(uploaded["id"])
        stop = asyncio.Event()
        worker = BatchWorker(jobs.work, lambda: runtime.engine, name="w", assigner=chosen)
        task = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(60):
            while job["status"] != "completed":
                await asyncio.sleep(0.05)
                job = await jobs.retrieve(job["id"])
        stop.set()
        await task
        return [line async for line in jobs.results(job["id"])], chosen
    finally:
        await runtime.close()


def test_the_assigned_expert_answers_once_every_line_is_routed(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    results, assigner = asyncio.run(run_job(tmp_path, upstreams, OddLinesToE1))
    assert isinstance(assigner, OddLinesToE1)
    # once per job, every line routed, none answered yet
    assert assigner.calls == [{"lines": LINES, "routes": LINES, "results": 0}]
    by_id = {r["custom_id"]: r["response"]["body"] for r in results}
    for i in range(LINES):
        body = by_id[f"q{i}"]
        expert = "e1" if i % 2 else "e0"
        assert body["coe"]["expert"] == expert
        assert body["coe"]["decision"]["chosen"] == [expert]
        assert body["choices"][0]["message"]["content"] == f"[u{expert[1]}] question {i}"


def test_the_default_keeps_every_plan_as_routed(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    results, _ = asyncio.run(run_job(tmp_path, upstreams, None))
    assert [r["custom_id"] for r in results] == [f"q{i}" for i in range(LINES)]
    assert {r["response"]["body"]["coe"]["expert"] for r in results} == {"e0"}
    assert KeepRouted.name == "keep"
