"""Batch work after Redis loses its data: a `coe worker` process whose consumer group was
wiped with everything else makes it again and runs the next job (real gateway and worker
processes on a Redis of the test's own), before any new job would have made it again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import yaml

from coe.testing import FakeUpstream
from tests.support.net import free_port, wait_healthy
from tests.support.processes import coe_processes
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]


def jsonl(n: int, tag: str) -> bytes:
    lines = [
        {
            "custom_id": f"{tag}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "alpha", "messages": [{"role": "user", "content": f"q {tag} {i}"}]},
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


def finish(http: httpx.Client, content: bytes, timeout_s: float = 60) -> dict[str, object]:
    r = http.post("/v1/batches", files={"file": ("in.jsonl", content)})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/batches/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled", "expired"):
            return dict(job)
        assert time.monotonic() < deadline, f"batch {job_id} stuck: {job}"
        time.sleep(0.2)


def test_a_worker_runs_jobs_again_after_redis_is_wiped(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with FakeUpstream("alpha") as up:
        cfg = tmp_path / "experts.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "experts": [{"name": "alpha", "model": "m", "endpoints": [up.base_url]}],
                    "default_expert": "alpha",
                    "pipelines": {"auto": {"routers": ["default"]}},
                    "routers_dirs": [str(REPO / "routers")],
                }
            )
        )
        port = free_port()
        env = {
            "COE_REDIS_URL": redis_server.url,
            "COE_EXPERTS_FILE": str(cfg),
            "COE_BATCH_CLAIM_IDLE_S": "2",
        }
        with coe_processes(tmp_path, env) as procs:
            procs.start("gateway", "serve", "--dev", "--port", str(port))
            procs.start("worker", "worker", "--name", "w1")
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base)
            with httpx.Client(base_url=base, timeout=30) as http:
                assert finish(http, jsonl(3, "before"))["status"] == "completed"
                redis_server.client().flushall()  # the stream and its consumer group go too
                time.sleep(4)  # the worker reads on: it makes its group again at once
                assert procs.log("worker").count("NOGROUP") <= 1, procs.log("worker")[-2000:]
                job = finish(http, jsonl(3, "after"))
                assert job["status"] == "completed", (job, procs.log("worker")[-2000:])
                counts = job["request_counts"]
                assert counts == {"total": 3, "completed": 3, "failed": 0}, counts
