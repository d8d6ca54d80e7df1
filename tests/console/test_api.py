"""/ui/api on an in-process gateway, on the embedded store and on Redis: what each endpoint
shows after real chat traffic, and the tokens it needs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.runtime import Runtime
from coe.testing import Fault
from tests.console.conftest import REDIS_URL, console_config
from tests.support.asgi import InProcessUpstream, asgi_client, route_to, running_gateway

ADMIN_TOKEN = "console-admin-token-0123456789"
METRICS_TOKEN = "console-metrics-token-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
ENDPOINTS = ["/ui/api/session", "/ui/api/mix", "/ui/api/requests", "/ui/api/experts"]
ENDPOINTS += ["/ui/api/batches"]
POOL_URL = "http://pool.test"
POOL_STATE = {
    "pools": {
        "gpu0": {
            "controller": "static",
            "capacity": 1,
            "occupied": 1,
            "experts": {
                "pooled": {
                    "model": "pooled-model",
                    "state": "resident",
                    "queue": 3,
                    "active": 1,
                    "retry_in_s": None,
                }
            },
        }
    }
}


def pool_service() -> FastAPI:
    """What a pool service publishes at /pool/state (its answers are not needed here)."""
    app = FastAPI()

    @app.get("/pool/state")
    async def state() -> dict[str, Any]:
        return POOL_STATE

    return app


def chat(text: str, model: str = "coe/auto", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


class Console:
    """A running gateway, a client of it, and its fake experts."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, upstreams: dict[str, Any]):
        self.app = app
        self.client = client
        self.upstreams = upstreams

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        resp = await self.client.get(path, headers=ADMIN if headers is None else headers)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def settled(self) -> None:
        """Every request answered so far is in the store."""
        await self.runtime.activity.flush()


@asynccontextmanager
async def console(settings: Settings, pooled: bool = False) -> AsyncIterator[Console]:
    alpha, beta = InProcessUpstream("alpha"), InProcessUpstream("beta")
    raw = console_config({"alpha": alpha.base_url, "beta": beta.base_url}, "alpha")
    transport = route_to(alpha, beta)
    if pooled:
        raw["pools"] = {"gpu0": {"service": POOL_URL}}
        raw["experts"].append(
            {"name": "pooled", "model": "pooled-model", "endpoints": [POOL_URL], "pool": "gpu0"}
        )
        transport.mount(POOL_URL, pool_service())
    async with (
        running_gateway(settings, CoeConfig.model_validate(raw), transport) as app,
        asgi_client(app) as client,
    ):
        yield Console(app, client, {"alpha": alpha, "beta": beta})


@pytest.fixture
async def gateway(store_settings: dict[str, Any]) -> AsyncIterator[Console]:
    settings = Settings(
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        metrics_token=METRICS_TOKEN,  # type: ignore[arg-type]
        batch_worker=True,
        **store_settings,
    )
    async with console(settings) as running:
        yield running


async def test_every_endpoint_needs_a_token_when_one_is_set(gateway: Console) -> None:
    refusals = [{}, {"authorization": "Bearer not-a-token-0123456789"}]
    refusals.append({"authorization": f"Basic {ADMIN_TOKEN}"})
    for path in ENDPOINTS:
        for headers in refusals:
            resp = await gateway.client.get(path, headers=headers)
            assert resp.status_code == 401, (path, headers)
            error = resp.json()["error"]
            assert error["type"] == "authentication_error" and "COE_ADMIN_TOKEN" in error["message"]
        for token in (ADMIN_TOKEN, METRICS_TOKEN):
            resp = await gateway.client.get(path, headers={"authorization": f"Bearer {token}"})
            assert resp.status_code == 200, (path, resp.text)


async def test_the_session_says_who_may_edit(gateway: Console) -> None:
    admin = await gateway.get("/ui/api/session")
    reader = await gateway.get(
        "/ui/api/session", headers={"authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert admin["auth_required"] and admin["admin"]
    assert reader["auth_required"] and not reader["admin"]
    assert admin["models"] == ["coe/auto", "coe/plain"]
    assert admin["replica"] == gateway.runtime.replica_id


async def test_dev_mode_keeps_the_data_open_and_its_admin_token_working() -> None:
    async with console(Settings(dev_mode=True)) as dev:
        for path in ENDPOINTS:
            assert (await dev.client.get(path)).status_code == 200, path
        session = await dev.get("/ui/api/session", headers={})
        assert not session["auth_required"] and not session["admin"]
        generated = {"authorization": f"Bearer {dev.runtime.admin_token}"}
        assert (await dev.get("/ui/api/session", headers=generated))["admin"]
        assert (await dev.client.get("/admin/experts", headers=generated)).status_code == 200


async def test_a_metrics_token_alone_closes_the_data_in_dev_mode() -> None:
    settings = Settings(dev_mode=True, metrics_token=METRICS_TOKEN)  # type: ignore[arg-type]
    async with console(settings) as dev:
        assert (await dev.client.get("/ui/api/mix")).status_code == 401
        for token in (METRICS_TOKEN, dev.runtime.admin_token):
            await dev.get("/ui/api/mix", headers={"authorization": f"Bearer {token}"})


async def test_chat_requests_show_in_the_mix_and_the_recent_list(gateway: Console) -> None:
    ids = []
    for body in (chat("ask beta about rivers"), chat("ask beta again"), chat("hello there")):
        resp = await gateway.client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        ids.append(resp.headers["x-request-id"])
    plain = await gateway.client.post("/v1/chat/completions", json=chat("hi", "coe/plain"))
    assert plain.status_code == 200
    ids.append(plain.headers["x-request-id"])
    await gateway.settled()

    mix = await gateway.get("/ui/api/mix")
    rows = {(r["pipeline"], r["router"], r["expert"]): r for r in mix["rows"]}
    assert rows[("auto", "mention", "beta")]["last_5m"] == 2
    assert rows[("auto", "default", "alpha")]["last_60m"] == 1  # nobody named: the default
    assert rows[("plain", "default", "alpha")]["last_5m"] == 1
    assert mix["totals"] == {"last_5m": 4, "last_60m": 4}

    recent = (await gateway.get("/ui/api/requests"))["data"]
    assert [r["request_id"] for r in recent] == ids[::-1]
    assert [r["model"] for r in recent] == ["coe/plain", "coe/auto", "coe/auto", "coe/auto"]
    newest_beta = recent[2]
    assert newest_beta["expert"] == "beta" and newest_beta["status"] == 200
    assert newest_beta["reason"] == "the query names beta"
    assert newest_beta["candidates"][0] == {"expert": "beta", "score": 0.9}
    assert newest_beta["k"] == 1 and newest_beta["aggregation"] is None
    assert newest_beta["latency_ms"] > 0 and not newest_beta["stream"]
    assert len((await gateway.get("/ui/api/requests?limit=2"))["data"]) == 2


async def test_streams_and_failures_are_recorded(gateway: Console) -> None:
    resp = await gateway.client.post("/v1/chat/completions", json=chat("beta", stream=True))
    assert resp.status_code == 200
    for upstream in gateway.upstreams.values():
        upstream.fault = Fault(mode="status", status=500)
    failed = await gateway.client.post("/v1/chat/completions", json=chat("beta please"))
    assert failed.status_code == 502
    await gateway.settled()

    recent = (await gateway.get("/ui/api/requests"))["data"]
    assert recent[0]["request_id"] == failed.headers["x-request-id"]
    assert recent[0]["status"] == 502 and recent[0]["expert"] is None and recent[0]["error"]
    assert recent[1]["stream"] and recent[1]["expert"] == "beta" and recent[1]["status"] == 200


async def test_expert_health_follows_the_calls(gateway: Console) -> None:
    before = {e["name"]: e for e in (await gateway.get("/ui/api/experts"))["data"]}
    assert set(before) == {"alpha", "beta"}
    assert before["beta"]["health"] == "unknown" and before["beta"]["replicas"] == []

    gateway.upstreams["beta"].fault = Fault(mode="status", status=500)
    resp = await gateway.client.post("/v1/chat/completions", json=chat("beta"))
    assert resp.headers["x-coe-expert"] == "alpha"  # beta failed, alpha answered

    after = {e["name"]: e for e in (await gateway.get("/ui/api/experts"))["data"]}
    assert after["alpha"]["health"] == "ok"
    assert after["beta"]["health"] == "down"
    (replica,) = after["beta"]["replicas"]
    assert replica["url"] == "http://beta.test" and not replica["up"] and replica["failures"] == 1


async def test_pooled_experts_show_what_their_pool_publishes() -> None:
    settings = Settings(admin_token=ADMIN_TOKEN)  # type: ignore[arg-type]
    async with console(settings, pooled=True) as running:
        data = await running.get("/ui/api/experts")
    experts = {e["name"]: e for e in data["data"]}
    assert experts["pooled"]["pool"] == "gpu0"
    assert experts["pooled"]["pool_state"] == POOL_STATE["pools"]["gpu0"]["experts"]["pooled"]
    assert experts["alpha"]["pool_state"] is None
    assert data["pools"] == [
        {"name": "gpu0", "reachable": True, "controller": "static", "capacity": 1, "occupied": 1}
    ]


async def test_batches_are_listed_with_their_counts(gateway: Console) -> None:
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat("q")}
        for i in range(3)
    ]
    text = "\n".join(json.dumps(line) for line in lines).encode()
    upload = await gateway.client.post(
        "/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", text)}
    )
    assert upload.status_code == 200, upload.text
    body = {
        "input_file_id": upload.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = (await gateway.client.post("/v1/batches", json=body)).json()
    async with asyncio.timeout(60):
        while True:  # the in-process worker runs it
            if (await gateway.get("/ui/api/batches"))["data"][0]["status"] == "completed":
                break
            await asyncio.sleep(0.1)

    listed = (await gateway.get("/ui/api/batches"))["data"]
    assert [b["id"] for b in listed] == [created["id"]]
    assert listed[0]["request_counts"] == {"total": 3, "completed": 3, "failed": 0}


async def test_the_page_is_served_and_kept_out_of_the_schema(gateway: Console) -> None:
    for path in ("/ui", "/ui/"):
        page = await gateway.client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "coe console" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    script = await gateway.client.get("/ui/console.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert (await gateway.client.get("/ui/console.css")).status_code == 200
    assert (await gateway.client.get("/ui/nothing-here.js")).status_code == 404
    paths = (await gateway.client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


@pytest.mark.redis
async def test_every_replica_shows_the_traffic_of_all(redis_prefix: str) -> None:
    settings = Settings(
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        redis_url=REDIS_URL,
        store_prefix=redis_prefix,
    )
    async with console(settings) as a, console(settings) as b:
        one = await a.client.post("/v1/chat/completions", json=chat("beta from a"))
        two = await b.client.post("/v1/chat/completions", json=chat("alpha from b"))
        await a.settled()
        await b.settled()
        for replica in (a, b):
            recent = (await replica.get("/ui/api/requests"))["data"]
            assert [r["request_id"] for r in recent] == [
                two.headers["x-request-id"],
                one.headers["x-request-id"],
            ]
            mix = await replica.get("/ui/api/mix")
            assert {r["expert"]: r["last_5m"] for r in mix["rows"]} == {"alpha": 1, "beta": 1}
