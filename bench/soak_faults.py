"""The soak's faults, on a schedule scaled to the run: upstreams killed (-9) and restarted,
Redis restarted empty, Redis hung (SIGSTOP/SIGCONT), and the batch worker killed mid-batch
with the batch's results checked line by line."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.soak_procs import EXPERTS, Deployment

BATCH_LINES = 400
AFTER_RESTART_LINES = 20
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class Window:
    """A fault as it happened: what, and from when to when (monotonic)."""

    name: str
    start: float
    end: float = 0.0
    note: str = ""


@dataclass
class Step:
    at: float  # seconds after the load starts
    kind: str  # upstream | redis_hang | redis_restart | worker_kill
    target: str = ""
    hold_s: float = 0.0


def schedule(seconds: float) -> list[Step]:
    """Every fault at least once, spread over the run so the last has time to heal."""
    down_s = min(20.0, 0.15 * seconds)
    kills = max(2, round(seconds / 100))
    span = 0.65 * seconds / (kills - 1)
    steps = [
        Step(0.15 * seconds + i * span, "upstream", EXPERTS[i % len(EXPERTS)], down_s)
        for i in range(kills)
    ]
    steps += [
        Step(0.04 * seconds, "worker_kill", "worker", min(5.0, 0.05 * seconds)),
        Step(0.33 * seconds, "redis_hang", "redis", min(10.0, 0.08 * seconds)),
        Step(0.62 * seconds, "redis_restart", "redis"),
    ]
    return sorted(steps, key=lambda s: s.at)


@dataclass
class BatchCheck:
    """The batch submitted before the worker is killed, and what came out of it."""

    lines: int = 0
    batch_id: str = ""
    status: str = "not submitted"
    killed_at_done: int = -1  # lines finished when the worker was killed (-1: not killed)
    results: Counter[str] = field(default_factory=Counter)  # custom_id -> result lines
    read: bool = False  # the result files were read
    failed_lines: int = 0
    note: str = ""

    def summary(self) -> dict[str, Any]:
        ids = [f"b{i}" for i in range(self.lines)]
        return {
            "lines": self.lines,
            "batch_id": self.batch_id,
            "status": self.status,
            "worker_killed_after_lines": self.killed_at_done,
            "lost_lines": sum(1 for i in ids if self.results[i] == 0),
            "duplicate_lines": sum(1 for i in ids if self.results[i] > 1),
            "failed_lines": self.failed_lines,
            "note": self.note,
        }


def batch_jsonl(lines: int) -> bytes:
    models = [*EXPERTS, "coe/auto"]
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"b{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": models[i % len(models)],
                    "messages": [
                        {"role": "user", "content": f"batch question {i}: what is {i}+1?"}
                    ],
                    "max_tokens": 16,
                },
            }
        )
        for i in range(lines)
    ).encode()


async def submit_batch(http: httpx.AsyncClient, lines: int) -> str:
    """Upload `lines` requests and start a batch on them, the OpenAI way; the batch's id."""
    up = await http.post(
        "/v1/files",
        files={"file": ("soak.jsonl", batch_jsonl(lines))},
        data={"purpose": "batch"},
    )
    up.raise_for_status()
    made = await http.post(
        "/v1/batches",
        json={
            "input_file_id": up.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    made.raise_for_status()
    return str(made.json()["id"])


async def read_job(http: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    """The batch as the API shows it now; {} when it cannot be read now."""
    try:
        r = await http.get(f"/v1/batches/{batch_id}")
        if r.status_code == 404:
            return {"status": "gone"}
        return dict(r.json()) if r.status_code == 200 else {}
    except httpx.HTTPError:
        return {}


async def warm_worker(http: httpx.AsyncClient, timeout_s: float = 300) -> None:
    """A batch of four lines (one routed) through the worker: it has loaded all it needs."""
    batch_id = await submit_batch(http, 4)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await read_job(http, batch_id)).get("status") in TERMINAL:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the batch worker did not finish a 4-line batch in {timeout_s:.0f} s")


class Faults:
    """Runs the schedule against a deployment, keeping a window per fault."""

    def __init__(self, dep: Deployment, seconds: float, batch_lines: int = BATCH_LINES):
        self.dep = dep
        self.steps = schedule(seconds)
        self.windows: list[Window] = []
        self.batch = BatchCheck(lines=batch_lines)
        # submitted once Redis is back empty: do the workers take new jobs again?
        self.after_restart = BatchCheck(lines=AFTER_RESTART_LINES)
        self.http = httpx.AsyncClient(base_url=dep.gateways[0], timeout=30)

    async def run(self, t0: float) -> None:
        """Each step at its own time, so one that takes long does not shift the others."""
        await asyncio.gather(*(self._at(t0, step) for step in self.steps))

    async def _at(self, t0: float, step: Step) -> None:
        await asyncio.sleep(max(0.0, t0 + step.at - time.monotonic()))
        if step.kind == "redis_restart":
            await self.finish_batch(timeout_s=60)  # an empty Redis takes the batch with it
        await getattr(self, step.kind)(step)

    async def upstream(self, step: Step) -> None:
        name = f"up:{step.target}"
        w = Window(f"kill -9 upstream {step.target}", time.monotonic())
        self.windows.append(w)
        self.dep.upstream_down[step.target].went_down(w.start)
        self.dep.kill(name)
        await asyncio.sleep(step.hold_s)
        up = await self.dep.start_upstream(step.target)
        self.dep.upstream_down[step.target].came_up(up)
        w.end = up

    async def redis_hang(self, step: Step) -> None:
        w = Window(f"SIGSTOP redis {step.hold_s:.0f} s", time.monotonic())
        self.windows.append(w)
        self.dep.redis_down.went_down(w.start)
        self.dep.signal("redis", signal.SIGSTOP)
        await asyncio.sleep(step.hold_s)
        self.dep.signal("redis", signal.SIGCONT)
        w.end = time.monotonic()
        self.dep.redis_down.came_up(w.end)

    async def redis_restart(self, step: Step) -> None:
        w = Window("restart redis empty", time.monotonic())
        self.windows.append(w)
        self.dep.redis_down.went_down(w.start)
        self.dep.kill("redis")
        w.end = await self.dep.start_redis()
        self.dep.redis_down.came_up(w.end)
        a = self.after_restart
        for tries in range(1, 31):  # the gateways' circuit to Redis closes within seconds
            try:
                a.batch_id, a.status = await submit_batch(self.http, a.lines), "submitted"
                a.note = f"accepted at try {tries}, 1 s apart" if tries > 1 else ""
                return
            except httpx.HTTPError as err:
                a.status, a.note = "submit failed", f"{type(err).__name__}: {err}"[:160]
                await asyncio.sleep(1)

    async def worker_kill(self, step: Step) -> None:
        """Submit the batch, SIGKILL the worker once lines are being answered, restart it."""
        b = self.batch
        try:
            b.batch_id, b.status = await submit_batch(self.http, b.lines), "submitted"
        except httpx.HTTPError as err:
            b.status, b.note = "submit failed", f"{type(err).__name__}: {err}"
            return
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline:
            job = await read_job(self.http, b.batch_id)
            counts = job.get("request_counts") or {}
            done = int(counts.get("completed", 0)) + int(counts.get("failed", 0))
            if done > 0 or job.get("status") in TERMINAL:
                break
            await asyncio.sleep(0.05)
        w = Window("kill -9 batch worker", time.monotonic())
        self.windows.append(w)
        self.dep.kill("worker")
        b.killed_at_done = done
        if done >= b.lines:
            b.note = "the batch finished before the worker could be killed mid-batch"
        await asyncio.sleep(step.hold_s)
        self.dep.start_worker()
        w.end = time.monotonic()

    async def finish_batch(self, timeout_s: float = 180, b: BatchCheck | None = None) -> None:
        """Wait for a batch (the main one by default) to end; count result lines per custom_id."""
        b = b or self.batch
        if not b.batch_id or b.read:
            return
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = await read_job(self.http, b.batch_id)
            if job.get("status") in (*TERMINAL, "gone"):
                break
            await asyncio.sleep(0.5)
        b.status = str(job.get("status", "unreadable"))
        if b.status == "gone":
            b.note = "the batch was gone (a Redis restarted empty took it) before it finished"
            return
        if b.status not in TERMINAL:
            b.note = f"not finished {timeout_s:.0f} s after it was awaited"
            return
        for key in ("output_file_id", "error_file_id"):
            if job.get(key):
                r = await self.http.get(f"/v1/files/{job[key]}/content")
                r.raise_for_status()
                for line in r.text.splitlines():
                    if line.strip():
                        row = json.loads(line)
                        b.results[row["custom_id"]] += 1
                        b.failed_lines += row.get("error") is not None
        b.read = True

    async def close(self) -> None:
        await self.http.aclose()
