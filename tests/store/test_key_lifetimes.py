"""Nothing in the store grows without bound: after real traffic through a gateway on Redis
(keyed chat calls, an instruction router caching what its LLM wrote, a batch job through
/v1/files and /v1/batches run to the end by a worker, sweeps), every key under the prefix
either expires or is declared persistent in `coe.store.keys.PERSISTENT`."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis.asyncio as aioredis

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.store import keys
from tests.support.asgi import InProcessUpstream, asgi_client, route_to, running_gateway
from tests.support.net import delete_prefix

pytestmark = [pytest.mark.redis, pytest.mark.embed]
REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "lifetimes-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
INSTRUCTIONS = {
    "coder": "The task is to write or fix a computer program.",
    "writer": "The task is to write prose, a story or a letter.",
}


def config(instructions: Path, upstreams: list[InProcessUpstream]) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {"name": u.state.name, "model": "m", "endpoints": [u.base_url]} for u in upstreams
            ],
            "default_expert": "writer",
            "routers": {
                "glider": {
                    "type": "instruction",
                    "params": {"instruction_expert": "writer", "instructions": str(instructions)},
                },
                "fallback": {"type": "default"},
            },
            "pipelines": {"auto": {"routers": ["glider", "fallback"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    value = f"coe-test-lifetimes:{uuid.uuid4().hex[:10]}:"
    yield value
    await asyncio.to_thread(delete_prefix, REDIS_URL, value)


async def lifetimes(prefix: str) -> dict[str, int]:
    """Every key under `prefix` (prefix removed) -> its TTL in ms (-1: none)."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        found = [k async for k in client.scan_iter(match=prefix + "*")]
        return {k.removeprefix(prefix): int(await client.pttl(k)) for k in found}
    finally:
        await client.aclose()


async def run_batch(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {key}"}
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "coe/auto", "messages": [{"role": "user", "content": f"q {i}"}]},
        }
        for i in range(5)
    ]
    text = "\n".join(json.dumps(ln) for ln in lines).encode()
    upload = await client.post(
        "/v1/files",
        headers=auth,
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", text, "application/jsonl")},
    )
    assert upload.status_code == 200, upload.text
    body = {
        "input_file_id": upload.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = await client.post("/v1/batches", headers=auth, json=body)
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    async with asyncio.timeout(60):
        while True:
            job = (await client.get(f"/v1/batches/{batch_id}", headers=auth)).json()
            if job["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            await asyncio.sleep(0.1)
    assert job["status"] == "completed", job
    assert job["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    output = await client.get(f"/v1/files/{job['output_file_id']}/content", headers=auth)
    assert output.status_code == 200 and len(output.text.splitlines()) == 5
    return dict(job)


async def test_every_key_expires_unless_declared_persistent(prefix: str, tmp_path: Path) -> None:
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps(INSTRUCTIONS))
    upstreams = [InProcessUpstream("coder"), InProcessUpstream("writer")]
    settings = Settings(
        redis_url=REDIS_URL,
        store_prefix=prefix,
        admin_token=TOKEN,
        require_api_key=True,
        batch_worker=True,
        batch_chunk=2,
        batch_claim_idle_s=5.0,
        batch_sweep_every_s=0.2,
        batch_retention_s=3600,
    )
    cfg = config(instructions, upstreams)
    async with (
        running_gateway(settings, cfg, route_to(*upstreams)) as app,
        asgi_client(app, timeout=30) as client,
    ):
        made = await client.post("/admin/keys", json={"name": "lifetimes"}, headers=ADMIN)
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        auth = {"authorization": f"Bearer {key}"}
        for text in ("write a poem", "fix my python code", "write a poem"):
            chat = {"model": "coe/auto", "messages": [{"role": "user", "content": text}]}
            answer = await client.post("/v1/chat/completions", json=chat, headers=auth)
            assert answer.status_code == 200, answer.text
        await run_batch(client, key)
        await asyncio.sleep(0.5)  # a few sweeps (leases, liveness) after the job finished
        seen = await lifetimes(prefix)

    kinds = {k.split(":")[0] for k in seen}
    # the traffic reached every kind of key this test is about
    assert {"experts", "apikeys", "ratelimit", "cache", "batch", "file", "files"} <= kinds, seen
    assert any(k.startswith("cache:instruction:") for k in seen), seen
    forever = sorted(k for k, ttl in seen.items() if ttl < 0 and not keys.is_persistent(k))
    assert not forever, f"keys with no TTL that keys.PERSISTENT does not declare: {forever}"
    retained = [k for k in seen if k.startswith("batch:batch_")]
    assert retained and all(0 < seen[k] <= 3600 * 1000 for k in retained), {
        k: seen[k] for k in retained
    }


async def test_a_unit_that_outlives_its_job_leaves_no_key_without_ttl() -> None:
    """A worker still on a unit when its job finished (here: every line answered at once,
    being invalid, and the job read to `completed`) records the unit done after the job's
    keys were given their retention; the key that creates is bounded too."""
    from coe.batch import BatchJobs, BatchWorker
    from coe.batch.units import Unit
    from coe.pipeline import Engine
    from tests.support.redis import isolated_redis_store

    async with isolated_redis_store(REDIS_URL, "late-unit") as store:
        jobs = BatchJobs(store, chunk=2, retention_s=3600)
        bad = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}
        text = "\n".join(json.dumps({**bad, "custom_id": f"q{i}"}) for i in range(2))
        upload = await jobs.files.create(text, len(text), "in.jsonl")
        job = await jobs.create(upload["id"])
        assert (await jobs.retrieve(job["id"]))["status"] == "completed"
        [(entry_id, _)] = await jobs.work.claim("late", idle_ms=60_000)  # its route unit
        await jobs.work.ack(entry_id)
        await jobs.work.enqueue([Unit(job["id"], "run", expert="e", items=(0, 1))])
        [(entry_id, unit)] = await jobs.work.claim("late", idle_ms=60_000)
        worker = BatchWorker(jobs.work, engine=lambda: cast(Engine, None), name="late")
        await worker.handle(entry_id, unit)
        prefix = store.prefix
        seen = await lifetimes(prefix)
    created = keys.batch_runs_done(job["id"])
    assert created in seen, seen  # the late unit wrote it after the job finished
    forever = sorted(k for k, ttl in seen.items() if ttl < 0 and not keys.is_persistent(k))
    assert not forever, f"keys with no TTL that keys.PERSISTENT does not declare: {forever}"
