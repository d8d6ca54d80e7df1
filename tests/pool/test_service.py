"""The pool service: in process (its upstreams mounted on a host router), on real sockets
for streams and disconnects, and as `coe pool serve` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, parse_config
from coe.pool_service import create_pool_app
from coe.testing import FakeUpstream, Fault
from tests.pool.fake_lora import LoraServer
from tests.support.asgi import HostRouter, InProcessUpstream, asgi_client
from tests.support.cli import coe_in_process
from tests.support.net import free_port, wait_healthy
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]
SERVICE = "http://pool.test:8200"
ASK = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


def pool_config(pool: dict[str, Any], models: dict[str, str], service: str = SERVICE) -> CoeConfig:
    """Experts `name -> model` in pool `p`, served at `service`, plus one expert in no pool."""
    experts = [
        {"name": n, "model": m, "endpoints": [service], "pool": "p"} for n, m in models.items()
    ]
    experts.append({"name": "plain", "model": "plain", "endpoints": ["http://plain.test"]})
    return parse_config(
        {
            "experts": experts,
            "default_expert": "plain",
            "pools": {"p": {"service": service, **pool}},
        }
    )


def static_pool(**upstreams: str) -> dict[str, Any]:
    return {"controller": "static", "capacity": len(upstreams), "params": {"upstreams": upstreams}}


def lora_pool(server: LoraServer, url: str, capacity: int, **spec: Any) -> dict[str, Any]:
    adapters = {f"e-{n}": f"/adapters/{n}" for n in ("x", "y", "z")}
    params = {"base_url": url, "max_loras": server.max_loras, "adapters": adapters}
    return {"controller": "lora", "capacity": capacity, "params": params, **spec}


LORA_MODELS = {"e-x": "ad-x", "e-y": "ad-y", "e-z": "ad-z"}


@asynccontextmanager
async def service(
    config: CoeConfig, transport: httpx.AsyncBaseTransport
) -> AsyncIterator[httpx.AsyncClient]:
    """The pool service app with its pools started, and a client of it."""
    app = create_pool_app(config, transport=transport)
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        yield client


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, **ASK, **extra}


async def test_requests_reach_the_expert_their_model_names() -> None:
    a, b = InProcessUpstream("up-a"), InProcessUpstream("up-b")
    router = HostRouter().mount(a.base_url, a.app).mount(b.base_url, b.app)
    config = pool_config(static_pool(a=a.base_url, b=b.base_url), {"a": "model-a", "b": "model-b"})
    async with service(config, router) as client:
        resp = await client.post("/v1/chat/completions", json=chat("model-b"))
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "[up-b] hello there"
        assert (a.state.requests, b.state.requests) == (0, 1)
        # An expert's own name works too; the server still gets the model id it serves.
        resp = await client.post("/v1/chat/completions", json=chat("a"))
        assert resp.status_code == 200 and a.state.bodies[-1]["model"] == "model-a"
        assert a.state.bodies[-1]["messages"] == ASK["messages"]  # the body, as sent
        models = (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["model-a", "model-b"]


async def test_streams_and_upstream_statuses_are_relayed_as_sent() -> None:
    a = InProcessUpstream("up-a")
    config = pool_config(static_pool(a=a.base_url), {"a": "model-a"})
    async with service(config, HostRouter().mount(a.base_url, a.app)) as client:
        resp = await client.post("/v1/chat/completions", json=chat("model-a", stream=True))
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "[up-a] "
        a.fault = Fault(mode="status", status=503)
        resp = await client.post("/v1/chat/completions", json=chat("model-a"))
        assert resp.status_code == 503
        assert resp.json() == {"error": {"message": "injected 503", "type": "server_error"}}


async def test_bad_requests_get_openai_errors() -> None:
    a = InProcessUpstream("up-a")
    config = pool_config(static_pool(a=a.base_url), {"a": "model-a"})
    async with service(config, HostRouter().mount(a.base_url, a.app)) as client:
        resp = await client.post("/v1/chat/completions", json=chat("plain"))  # in no pool here
        assert resp.status_code == 404
        error = resp.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "model_not_found",
            "model",
        )
        assert "(models: model-a)" in error["message"]
        resp = await client.post("/v1/chat/completions", json=ASK)
        assert resp.status_code == 400 and "`model` is required" in resp.json()["error"]["message"]
        resp = await client.post("/v1/chat/completions", content=b"{not json")
        assert resp.status_code == 400 and "not JSON" in resp.json()["error"]["message"]
        headers = {"x-coe-priority": "urgent"}
        resp = await client.post("/v1/chat/completions", json=chat("a"), headers=headers)
        assert resp.status_code == 400 and "online or batch" in resp.json()["error"]["message"]
        assert a.state.requests == 0


def test_a_service_refuses_experts_it_could_not_tell_apart() -> None:
    twins = pool_config(static_pool(a="http://a.test", b="http://b.test"), {"a": "m", "b": "m"})
    with pytest.raises(ConfigError, match=r"experts a and b .* under the same model 'm'"):
        create_pool_app(twins)
    with pytest.raises(ConfigError, match=r"no pool named gpu9 in the config \(pools: p\)"):
        create_pool_app(twins, ["gpu9"])


class _Timeouts(HostRouter):
    """A host router whose `slow.test` never answers in time."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "slow.test":
            raise httpx.ReadTimeout("no answer", request=request)
        return await super().handle_async_request(request)


async def test_an_upstream_that_cannot_be_reached_is_502_and_one_too_slow_504() -> None:
    ups = {"gone": "http://gone.test", "slow": "http://slow.test"}
    config = pool_config(static_pool(**ups), {"gone": "m-gone", "slow": "m-slow"})
    async with service(config, _Timeouts()) as client:
        resp = await client.post("/v1/chat/completions", json=chat("m-gone"))
        assert resp.status_code == 502
        error = resp.json()["error"]
        assert error["type"] == "upstream_error" and "http://gone.test" in error["message"]
        resp = await client.post("/v1/chat/completions", json=chat("m-slow"))
        assert resp.status_code == 504 and resp.json()["error"]["type"] == "upstream_timeout"


async def test_state_is_published_in_the_shape_gateways_read() -> None:
    a, b = InProcessUpstream("up-a"), InProcessUpstream("up-b")
    router = HostRouter().mount(a.base_url, a.app).mount(b.base_url, b.app)
    config = pool_config(static_pool(a=a.base_url, b=b.base_url), {"a": "model-a", "b": "model-b"})
    async with service(config, router) as client:
        resident = {"state": "resident", "queue": 0, "active": 0, "retry_in_s": None}
        assert (await client.get("/pool/state")).json() == {
            "pools": {
                "p": {
                    "controller": "static",
                    "capacity": 2,
                    "occupied": 2,
                    "experts": {
                        "a": {"model": "model-a", **resident},
                        "b": {"model": "model-b", **resident},
                    },
                }
            }
        }
        assert (await client.get("/health")).status_code == 200


async def test_metrics_count_calls_and_show_each_experts_state() -> None:
    a = InProcessUpstream("up-a")
    config = pool_config(static_pool(a=a.base_url), {"a": "model-a"})
    async with service(config, HostRouter().mount(a.base_url, a.app)) as client:
        await client.post("/v1/chat/completions", json=chat("model-a"))
        headers = {"x-coe-priority": "batch"}
        await client.post("/v1/chat/completions", json=chat("model-a"), headers=headers)
        text = (await client.get("/metrics")).text
    for line in [
        'coe_pool_requests_total{expert="a",pool="p",priority="online",status="200"} 1.0',
        'coe_pool_requests_total{expert="a",pool="p",priority="batch",status="200"} 1.0',
        'coe_pool_expert_state{expert="a",pool="p",state="resident"} 1.0',
        'coe_pool_expert_state{expert="a",pool="p",state="unavailable"} 0.0',
        'coe_pool_capacity{pool="p"} 1.0',
        'coe_pool_occupied{pool="p"} 1.0',
        'coe_pool_wait_seconds_count{expert="a",pool="p"} 2.0',
    ]:
        assert line in text, line


async def test_a_swap_that_fails_is_503_then_unavailable_then_tried_again() -> None:
    lora = LoraServer(max_loras=1)
    lora.fail.add("ad-y")
    config = pool_config(lora_pool(lora, lora.base_url, 1, retry_after_s=0.5), LORA_MODELS)
    async with service(config, HostRouter().mount(lora.base_url, lora.app)) as client:
        resp = await client.post("/v1/chat/completions", json=chat("ad-y"))
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["type"] == "expert_unavailable"
        assert "could not load expert e-y" in error["message"]
        assert "injected failure" in error["message"]  # the server's own words
        assert resp.headers["retry-after"] == "1"
        state = (await client.get("/pool/state")).json()["pools"]["p"]
        assert state["experts"]["e-y"]["state"] == "unavailable"
        assert 0 < state["experts"]["e-y"]["retry_in_s"] <= 0.5
        assert state["occupied"] == 0  # the server confirmed it holds nothing
        resp = await client.post("/v1/chat/completions", json=chat("ad-y"))
        assert resp.status_code == 503 and "retry in" in resp.json()["error"]["message"]
        resp = await client.post("/v1/chat/completions", json=chat("ad-x"))
        assert resp.status_code == 200  # the pool serves its other experts meanwhile
        lora.fail.clear()
        await asyncio.sleep(0.55)
        resp = await client.post("/v1/chat/completions", json=chat("ad-y"))
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"].startswith("[ad-y]")
        state = (await client.get("/pool/state")).json()["pools"]["p"]
        assert state["experts"]["e-y"]["state"] == "resident"
        assert state["experts"]["e-y"]["retry_in_s"] is None
    assert lora.peak == 1


async def test_mixed_traffic_never_overcommits_the_device() -> None:
    lora = LoraServer(max_loras=2)
    config = pool_config(lora_pool(lora, lora.base_url, 2), LORA_MODELS)
    order = ["ad-x", "ad-y", "ad-z", "ad-x", "ad-z", "ad-y"] * 4
    async with service(config, HostRouter().mount(lora.base_url, lora.app)) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat(m)) for m in order)
        )
    texts = [r.json()["choices"][0]["message"]["content"] for r in answers]
    assert [t.split()[0] for t in texts] == [f"[{m}]" for m in order]
    assert lora.peak <= 2 and set(lora.loads()) == {"ad-x", "ad-y", "ad-z"}
    assert len(lora.loads()) < len(order)


# -- real sockets: streams relayed as they come, and clients that hang up -----------------


@pytest.fixture
def served_lora() -> Any:
    lora = LoraServer(max_loras=1)
    server = ServedApp(lora.app).start()
    try:
        yield lora, server.base_url
    finally:
        lora.gate.set()
        server.stop()


@asynccontextmanager
async def served_service(config: CoeConfig) -> AsyncIterator[httpx.AsyncClient]:
    server = ServedApp(create_pool_app(config)).start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            yield client
    finally:
        server.stop()


async def pool_state(client: httpx.AsyncClient) -> dict[str, Any]:
    experts: dict[str, Any] = (await client.get("/pool/state")).json()["pools"]["p"]["experts"]
    return experts


async def test_a_stream_is_relayed_as_it_comes_and_holds_its_expert_until_it_ends(
    served_lora: tuple[LoraServer, str],
) -> None:
    lora, url = served_lora
    config = pool_config(lora_pool(lora, url, 1), LORA_MODELS)
    async with served_service(config) as client:
        lora.gate.clear()  # streams stop after their first chunk until the gate opens
        body = chat("ad-x", stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 2)
            assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "[ad-x] "
            other = asyncio.create_task(client.post("/v1/chat/completions", json=chat("ad-y")))
            await asyncio.sleep(0.3)
            state = await pool_state(client)
            assert state["e-x"]["active"] == 1 and state["e-y"]["queue"] == 1
            assert not other.done()  # y needs x's place, which the open stream holds
            lora.gate.set()
            rest = [line async for line in lines if line]
        assert rest[-1] == "data: [DONE]" and len(rest) == 4
        assert (await asyncio.wait_for(other, 2)).status_code == 200
    assert lora.log == [("load", "ad-x"), ("unload", "ad-x"), ("load", "ad-y")]
    assert lora.peak == 1


async def test_a_client_that_hangs_up_leaves_the_queue_and_frees_its_expert(
    served_lora: tuple[LoraServer, str],
) -> None:
    lora, url = served_lora
    config = pool_config(lora_pool(lora, url, 1), LORA_MODELS)
    async with served_service(config) as client:
        lora.gate.clear()
        body = chat("ad-x", stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            lines = resp.aiter_lines()  # kept: a dropped iterator would close the stream
            await asyncio.wait_for(anext(lines), 2)
            # A call queued behind the stream whose client gives up: it leaves the queue.
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=chat("ad-y"), timeout=0.3)
            await asyncio.sleep(0.2)
            assert (await pool_state(client))["e-y"]["queue"] == 0
        # The streaming client hung up mid-stream: its admission is released.
        await asyncio.sleep(0.2)
        state = await pool_state(client)
        assert state["e-x"]["active"] == 0 and state["e-x"]["state"] == "resident"
    assert lora.loads() == ["ad-x"]  # nobody waits for y any more: it was never loaded


# -- `coe pool serve` ---------------------------------------------------------------------


@pytest.mark.process
def test_coe_pool_serve_fronts_its_upstreams_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with FakeUpstream("up-a") as a, FakeUpstream("up-b") as b:
        service_url = f"http://127.0.0.1:{port}"
        config = {
            "experts": [
                {"name": n, "model": f"model-{n}", "endpoints": [service_url], "pool": "cpu"}
                for n in ("a", "b")
            ],
            "default_expert": "a",
            "pools": {
                "cpu": {
                    "service": service_url,
                    **static_pool(a=a.base_url, b=b.base_url),
                }
            },
        }
        path = tmp_path / "experts.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "COE_LOG_LEVEL": "INFO"}
        # no --port: the pool's service URL names it
        proc = subprocess.Popen(
            [sys.executable, "-m", "coe.cli", "pool", "serve", "-c", str(path), "--pool", "cpu"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_healthy(service_url, timeout_s=60)
            with httpx.Client(base_url=service_url, timeout=10) as client:
                resp = client.post("/v1/chat/completions", json=chat("model-b"))
                assert resp.status_code == 200
                assert resp.json()["choices"][0]["message"]["content"] == "[up-b] hello there"
                with client.stream(
                    "POST", "/v1/chat/completions", json=chat("model-a", stream=True)
                ) as stream:
                    lines = [line for line in stream.iter_lines() if line]
                assert lines[-1] == "data: [DONE]" and "[up-a]" in lines[0]
                experts = client.get("/pool/state").json()["pools"]["cpu"]["experts"]
                assert {n: e["state"] for n, e in experts.items()} == {
                    "a": "resident",
                    "b": "resident",
                }
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # uvicorn shuts down cleanly, then exits by the signal it caught (as `coe serve` does)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "pool service: serving cpu" in err and "Application shutdown complete" in err
    assert "Traceback" not in err


def test_coe_pool_serve_refuses_an_unknown_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`coe pool serve` in-process, as its console script runs it; it never gets to serve."""
    config = pool_config(static_pool(a="http://a.test"), {"a": "model-a"})
    path = tmp_path / "experts.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))

    def served(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pool service started serving")

    monkeypatch.setattr(uvicorn, "run", served)
    out = coe_in_process("pool", "serve", "-c", str(path), "--pool", "gpu9", cwd=REPO)
    assert out.returncode == 2
    assert "error: no pool named gpu9 in the config (pools: p)" in out.stderr
