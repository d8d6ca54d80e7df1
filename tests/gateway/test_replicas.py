"""Several gateway replicas on one Redis: changes propagate (two `coe serve` processes); a
Redis outage is survived (in process, behind a TCP proxy that can be cut)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.testing import FakeUpstream
from tests.support.asgi import InProcessUpstream, gateway_client, route_to
from tests.support.net import delete_prefix, eventually, free_port, wait_healthy
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis
REPO = Path(__file__).resolve().parents[2]
TOKEN = "replica-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
MSG = [{"role": "user", "content": "hi"}]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def config_dict(url: str) -> dict:
    return {
        "experts": [{"name": "alpha", "model": "m", "endpoints": [url]}],
        "default_expert": "alpha",
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("up") as up:
        yield up


@pytest.fixture(scope="module")
def two_gateways(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two `coe serve` processes sharing one Redis under a fresh prefix."""
    tmp = tmp_path_factory.mktemp("replicas")
    cfg = tmp / "experts.yaml"
    cfg.write_text(yaml.safe_dump(config_dict(upstream.base_url)))
    prefix = f"coe-test-replicas:{uuid.uuid4().hex[:10]}:"
    env = {
        **os.environ,
        "COE_ADMIN_TOKEN": TOKEN,
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_REGISTRY_POLL_S": "30",
        "COE_REQUIRE_API_KEY": "1",
        "COE_LOG_LEVEL": "WARNING",
    }
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "coe.cli", "serve", "-c", str(cfg), "--port", str(p)], env=env
        )
        for p in ports
    ]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for u in urls:
            wait_healthy(u)
        yield [*urls, str(cfg)]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=15)
        delete_prefix(REDIS_URL, prefix)


def model_ids(url: str, key: str) -> set[str]:
    r = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


def make_key(url: str, name: str) -> dict:
    r = httpx.post(f"{url}/admin/keys", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


def chat_status(url: str, key: str, model: str = "coe/auto") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": MSG},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_changes_reach_the_other_replica(two_gateways: list[str], upstream: FakeUpstream) -> None:
    a, b, cfg = two_gateways
    key = make_key(a, "changes")["key"]
    new = {"name": "gamma", "model": "m", "endpoints": [upstream.base_url]}
    assert httpx.post(f"{a}/admin/experts", json=new, headers=ADMIN).status_code == 201
    # pub/sub, not the 30 s poll, carries the change
    assert eventually(lambda: "gamma" in model_ids(b, key), timeout_s=3)
    r = chat_status(b, key, model="gamma")
    assert r.status_code == 200 and r.headers["x-coe-expert"] == "gamma"
    assert httpx.delete(f"{b}/admin/experts/gamma", headers=ADMIN).status_code == 204
    assert eventually(lambda: "gamma" not in model_ids(a, key), timeout_s=3)
    # a routing-config reload asked of one replica reaches the other (both read the file)
    data = yaml.safe_load(Path(cfg).read_text())
    data["pipelines"]["wide"] = {"routers": ["default"], "k": 2}
    Path(cfg).write_text(yaml.safe_dump(data))
    reloaded = httpx.post(f"{a}/admin/reload", headers=ADMIN)
    assert reloaded.status_code == 200 and "wide" in reloaded.json()["pipelines"]
    assert eventually(lambda: "coe/wide" in model_ids(b, key), timeout_s=3)


def test_a_key_made_on_one_replica_serves_and_is_revoked_on_the_other(
    two_gateways: list[str],
) -> None:
    a, b, _ = two_gateways
    made = make_key(a, "shared")
    assert made["key"].startswith("coe-sk-")
    # the key made on A answers a chat request on B, and counts there
    r = chat_status(b, made["key"])
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "[up] hi"
    # a made-up key is refused by both: B is checking keys, not waving requests through
    for url in (a, b):
        r = chat_status(url, "coe-sk-" + "0" * 40)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # revoked on A: B refuses it well within the notice/poll interval (30 s here)
    r = httpx.delete(f"{a}/admin/keys/{made['id']}", headers=ADMIN)
    assert r.status_code == 204
    started = time.monotonic()
    assert eventually(lambda: chat_status(b, made["key"]).status_code == 401, timeout_s=3)
    assert time.monotonic() - started < 3
    r = chat_status(b, made["key"])
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert made["id"] not in [
        k["id"] for k in httpx.get(f"{b}/admin/keys", headers=ADMIN).json()["data"]
    ]


async def test_redis_outage_keeps_chat_serving() -> None:
    """Chat answers from the last snapshot while Redis is cut; admin writes get a clear 503.

    The gateway runs in process: the connection that matters is the one to Redis."""
    upstream = InProcessUpstream("up")
    proxy = await TcpProxy("127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])).start()
    prefix = f"coe-test-outage:{uuid.uuid4().hex[:10]}:"
    settings = Settings(
        admin_token=TOKEN,
        redis_url=f"redis://127.0.0.1:{proxy.port}/0",  # type: ignore[arg-type]
        store_prefix=prefix,
        registry_poll_s=0.2,
        require_api_key=True,
    )
    config = CoeConfig.model_validate(config_dict(upstream.base_url))
    chat = {"model": "coe/auto", "messages": MSG}
    try:
        async with gateway_client(settings, config, route_to(upstream)) as http:
            made = await http.post("/admin/keys", json={"name": "k"}, headers=ADMIN)
            http.headers["authorization"] = f"Bearer {made.json()['key']}"
            assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
            await proxy.cut()
            for _ in range(5):  # the key is checked from the local cache, limits fail open
                r = await http.post("/v1/chat/completions", json=chat)
                assert r.status_code == 200, r.text
                await asyncio.sleep(0.1)
            unknown = {"authorization": "Bearer coe-sk-never-seen"}
            r = await http.post("/v1/chat/completions", json=chat, headers=unknown)
            assert r.status_code == 503  # cannot verify a key it has never seen
            r = await http.post(
                "/admin/experts",
                headers=ADMIN,
                json={"name": "delta", "model": "m", "endpoints": [upstream.base_url]},
            )
            assert r.status_code == 503
            assert r.json()["error"]["type"] == "store_unavailable"
            assert "Redis is unavailable" in r.json()["error"]["message"]
            await proxy.restore()
            deadline = time.monotonic() + 10
            while True:  # reconnects by itself
                r = await http.post(
                    "/admin/experts",
                    headers=ADMIN,
                    json={"name": "delta", "model": "m", "endpoints": [upstream.base_url]},
                )
                if r.status_code == 201 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert r.status_code == 201, r.text
            r = await http.post("/v1/chat/completions", json={**chat, "model": "delta"})
            assert r.status_code == 200
    finally:
        await proxy.cut()
        await asyncio.to_thread(delete_prefix, REDIS_URL, prefix)
