"""Every metric `coe worker --metrics-port` exports moves: a gateway (no worker of its own)
takes a batch job on real Redis, a `coe worker` process runs it against fake experts (one
fails once, so a line falls back), and every family of the worker's /metrics must show a
sample above 0, save those that move only on faults."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.testing import FakeUpstream, Fault
from tests.observability.test_metrics_move import MOVE_ONLY_ON_FAULTS, Scrape, ask, still
from tests.support.asgi import asgi_client, running_gateway
from tests.support.net import delete_prefix, free_port
from tests.support.processes import coe_processes

pytestmark = pytest.mark.redis
REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
GATEWAY_ONLY = {"coe_rate_limited"}  # of MOVE_ONLY_ON_FAULTS: a worker does not export it
LINES = 3


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    ups = [FakeUpstream(f"u{i}").start() for i in range(2)]
    yield ups
    for u in ups:
        u.stop()


async def scrape_worker(port: int) -> Scrape | None:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.TransportError:
        return None  # not listening yet
    assert r.status_code == 200, r.text
    return Scrape(r.text)


async def test_every_worker_metric_moves(tmp_path: Path, upstreams: list[FakeUpstream]) -> None:
    prefix = f"coe-test-metrics:{uuid.uuid4().hex[:10]}:"
    raw = {
        "experts": [
            {"name": f"e{i}", "model": f"m{i}", "endpoints": [u.base_url]}
            for i, u in enumerate(upstreams)
        ],
        "default_expert": "e0",
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    settings = Settings(
        redis_url=REDIS_URL,
        store_prefix=prefix,
        batch_worker=False,
        dev_mode=True,
        experts_file=cfg,
    )
    env = {
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_EXPERTS_FILE": str(cfg),
        "COE_BATCH_CLAIM_IDLE_S": "2",
    }
    port = free_port()
    upstreams[0].fault = Fault(mode="status", status=500, times=1)  # one line falls back
    try:
        async with (
            running_gateway(settings, CoeConfig.model_validate(raw)) as app,
            asgi_client(app, timeout=10) as client,
        ):
            with coe_processes(tmp_path, env) as procs:
                procs.start("worker", "worker", "--metrics-port", str(port))
                lines = [{"custom_id": f"q{i}", "body": ask(f"line {i}")} for i in range(LINES)]
                content = "\n".join(json.dumps(line) for line in lines)
                r = await client.post("/v1/batches", files={"file": ("in.jsonl", content)})
                assert r.status_code == 201, r.text
                job_id = r.json()["id"]
                done = {"batch": job_id, "status": "completed"}
                deadline = time.monotonic() + 90
                while True:
                    scrape = await scrape_worker(port)
                    if scrape is not None and scrape.value("coe_batch_job_lines", **done) == LINES:
                        break
                    assert time.monotonic() < deadline, procs.log("worker")
                    await asyncio.sleep(0.3)
    finally:
        delete_prefix(REDIS_URL, prefix)
    families = set(scrape.families)
    idle = set(MOVE_ONLY_ON_FAULTS) - GATEWAY_ONLY
    assert idle <= families
    assert not families & {"coe_requests", "coe_gateway_overhead_seconds"}  # the gateway's
    assert still(scrape, families - idle) == []
    assert scrape.value("coe_batch_items", "_total", status="completed") == LINES
    assert scrape.value("coe_fallbacks", "_total", expert="e0") == 1
    assert scrape.value("coe_route_decision_seconds", "_count", router="default") == LINES
    assert scrape.value("coe_expert_tokens_per_second", "_count") == LINES
