"""Pools in experts.yaml, building them, the controllers' own checks and HTTP failures,
and the sleep controller refusing a CPU backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from coe.errors import ConfigError, ExpertUnavailable, UpstreamError
from coe.experts.schema import parse_config
from coe.pool import ExpertState, build_pools
from coe.pool.controllers.lora import LoraController
from coe.pool.controllers.sleep import SleepController, sleep_refusal
from tests.support.net import free_port

SERVICE = "http://127.0.0.1:9"  # the pool service every member names (nothing listens)
STATIC = {"upstreams": {"x": "http://127.0.0.1:9", "y": "http://127.0.0.1:9"}}


def config(**pool: Any) -> dict[str, Any]:
    return {
        "experts": [
            {"name": "x", "model": "ad-x", "endpoints": [SERVICE], "pool": "gpu0"},
            {"name": "y", "model": "ad-y", "endpoints": [SERVICE], "pool": "gpu0"},
            {"name": "z", "model": "m", "endpoints": ["http://127.0.0.1:9"]},
        ],
        "default_expert": "z",
        "pools": {"gpu0": {"service": SERVICE, **pool}},
    }


def test_pools_parse_and_unknown_pool_is_refused() -> None:
    cfg = parse_config(config(controller="static", capacity=2, max_wait_s=5))
    assert cfg.pools["gpu0"].capacity == 2 and cfg.expert("x").pool == "gpu0"  # type: ignore[union-attr]
    bad = config(controller="static", capacity=2)
    bad["experts"][2]["pool"] = "nope"
    with pytest.raises(ConfigError, match="unknown pool 'nope'"):
        parse_config(bad)


def test_unknown_controller_kind_names_the_pool_and_the_known_kinds() -> None:
    cfg = parse_config(config(controller="teleport", capacity=1))  # kinds are plug-ins
    with pytest.raises(
        ConfigError,
        match=r"pools\.gpu0\.controller: unknown swap controller kind 'teleport' "
        r"\(known: lora, process, sleep, static\)",
    ):
        build_pools(cfg, httpx.AsyncClient())
    unused = config(controller="teleport")
    for expert in unused["experts"]:
        expert.pop("pool", None)
    with pytest.raises(ConfigError, match="unknown swap controller kind"):
        build_pools(parse_config(unused), httpx.AsyncClient())


@pytest.mark.parametrize(
    ("controller", "params", "expected"),
    [
        (
            "lora",
            {"base_url": "http://h", "adapters": {"x": "/a"}, "colour": "red"},
            r"pools\.gpu0\.params \(lora\): max_loras: Field required; colour: unknown key",
        ),
        (
            "lora",
            {"base_url": "http://h", "max_loras": 2, "adapters": {"x": "/a"}},
            r"pools\.gpu0\.params\.adapters: no adapter for y",
        ),
        (
            "sleep",
            {"servers": {"x": "http://gpu:8001", "y": "http://gpu:8002"}, "level": 3},
            r"pools\.gpu0\.params \(sleep\): level: Input should be 1 or 2",
        ),
        (
            "process",
            {"servers": {"x": {"port": 8001}, "y": {"served_model_name": "m", "port": 8002}}},
            r"pools\.gpu0\.params \(process\): servers\.x\.served_model_name: Field required",
        ),
        (
            "process",
            {"servers": {"x": {"served_model_name": "m", "port": 8001}}},
            r"pools\.gpu0\.params\.servers: no server for y",
        ),
        (
            "static",
            {**STATIC, "anything": 1},
            r"pools\.gpu0\.params \(static\): anything: unknown key",
        ),
    ],
)
def test_bad_controller_params_name_the_pool_and_the_problem(
    controller: str, params: dict[str, Any], expected: str
) -> None:
    cfg = parse_config(config(controller=controller, capacity=1, params=params))
    with pytest.raises(ConfigError, match=expected):
        build_pools(cfg, httpx.AsyncClient())


def test_process_servers_are_local_servers_with_their_start_timeout() -> None:
    servers = {
        n: {"served_model_name": f"m-{n}", "port": 8000 + i, "start_timeout_s": 12}
        for i, n in enumerate("xy")
    }
    cfg = parse_config(config(controller="process", capacity=1, params={"servers": servers}))
    pool = build_pools(cfg, httpx.AsyncClient()).pool_of("x")
    assert pool is not None
    spec = pool.controller.specs["y"]  # type: ignore[attr-defined]
    assert (spec.served_model_name, spec.port, spec.start_timeout_s) == ("m-y", 8001, 12)


async def test_static_pool_admits_through_the_client_hook() -> None:
    cfg = parse_config(config(controller="static", capacity=2, params=STATIC))
    async with httpx.AsyncClient() as http:
        pools = build_pools(cfg, http)
        await pools.start()
        try:
            assert pools.pool_of("z") is None
            pool = pools.pool_of("x")
            assert pool is not None and pool.states() == {
                "x": ExpertState.RESIDENT,
                "y": ExpertState.RESIDENT,
            }
            async with pools.admit("z"), pools.admit("x"):
                pass
        finally:
            await pools.close()


def test_lora_capacity_cannot_exceed_max_loras() -> None:
    params = {"base_url": "http://127.0.0.1:9", "max_loras": 1, "adapters": {"x": "/a", "y": "/b"}}
    cfg = parse_config(config(controller="lora", capacity=2, params=params))
    with pytest.raises(ConfigError, match="exceeds"):
        build_pools(cfg, httpx.AsyncClient())
    cfg = parse_config(config(controller="lora", capacity=1, params=params))
    pool = build_pools(cfg, httpx.AsyncClient()).pool_of("x")
    assert pool is not None and isinstance(pool.controller, LoraController)
    assert pool.controller.adapters["y"] == ("ad-y", "/b")


def test_sleep_refusal_reasons() -> None:
    cpu = {"vllm_config": {"device_config": {"device_type": "cpu"}, "model_config": {}}}
    assert "CPU backend" in (sleep_refusal(cpu) or "")
    no_flag = {"vllm_config": {"device_config": {"device_type": "cuda"}, "model_config": {}}}
    assert "--enable-sleep-mode" in (sleep_refusal(no_flag) or "")
    ok = {
        "vllm_config": {
            "device_config": {"device_type": "cuda"},
            "model_config": {"enable_sleep_mode": True},
        }
    }
    assert sleep_refusal(ok) is None


async def test_sleep_pool_refuses_a_server_without_sleep_endpoints() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/server_info"  # never /sleep: on CPU that hangs requests
        return httpx.Response(404, json={"detail": "Not Found"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        ctl = SleepController(http, {"x": "http://gpu:8000"})
        with pytest.raises(ConfigError, match="VLLM_SERVER_DEV_MODE"):
            await ctl.start()


def failing(status: int | None = None, exc: Exception | None = None) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if exc is not None:
            raise exc
        return httpx.Response(status or 500, text="adapter not found")

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        (failing(500), r"load adapter ad-x answered 500: adapter not found"),
        (failing(exc=httpx.ConnectError("refused")), r"load adapter ad-x failed: ConnectError"),
        (failing(exc=httpx.ReadTimeout("slow")), r"load adapter ad-x failed: ReadTimeout"),
    ],
)
async def test_lora_failures_are_expert_unavailable(http: httpx.AsyncClient, expected: str) -> None:
    ctl = LoraController(http, "http://lora:8000", 2, {"x": ("ad-x", "/a")})
    with pytest.raises(ExpertUnavailable, match=expected) as err:
        await ctl.load("x")
    assert err.value.url == "http://lora:8000"


async def test_sleep_failures_are_expert_unavailable_and_probe_failures_upstream_errors() -> None:
    ctl = SleepController(failing(503), {"x": "http://gpu:8000"})
    with pytest.raises(ExpertUnavailable, match=r"POST http://gpu:8000/wake_up answered 503") as e:
        await ctl.load("x")
    assert e.value.expert == "x"
    ctl = SleepController(failing(exc=httpx.ConnectError("refused")), {"x": "http://gpu:8000"})
    with pytest.raises(UpstreamError, match=r"GET http://gpu:8000/server_info failed"):
        await ctl.start()


def test_coe_up_and_the_process_controller_build_servers_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coe.experts.schema import LocalServer
    from coe.local.launcher import servers_for
    from coe.pool.controllers.process import ProcessController

    monkeypatch.setenv("COE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "config.json").write_text("{}")  # a local model folder
    spec = LocalServer(model=str(tmp_path), served_model_name="s", port=8123, start_timeout_s=7)
    (up,) = servers_for([spec])
    process = ProcessController({"x": spec})._server("x")
    for server in (up, process):
        assert (server.model_path, server.port, server.served_name) == (tmp_path, 8123, "s")
        assert server.start_timeout_s == 7
    assert up.log_path == tmp_path / "cache" / "logs" / "s.log"


async def test_a_server_that_never_gets_healthy_says_why(tmp_path: Path) -> None:
    from coe.local.vllm_server import VllmServer

    port = free_port()  # nothing listens: every poll is refused
    server = VllmServer(tmp_path, port, "smol", start_timeout_s=0.6)
    with pytest.raises(UpstreamError) as err:
        await server.wait_healthy()
    assert err.value.message.startswith("vLLM server smol not healthy after 1 s (last: GET ")
    assert f"127.0.0.1:{port}/health failed: ConnectError" in err.value.message


async def test_gateways_hold_no_pools_only_what_the_pool_services_publish() -> None:
    """A gateway's runtime builds no pool and starts no controller: it follows each pool
    service's state, and routes around a pool service it cannot reach."""
    from coe.config import Settings
    from coe.dispatch.liveness import PoolStates
    from coe.runtime import build_runtime

    cfg = parse_config(config(controller="static", capacity=2, params=STATIC))
    runtime = await build_runtime(Settings(dev_mode=True), cfg, serve_admin=False)
    try:
        assert isinstance(runtime.pools, PoolStates) and runtime.client.liveness is runtime.pools
        assert runtime.client.unavailable() == {"x", "y"}  # nothing listens at the service
        assert runtime.engine.context().experts.keys() == {"z"}
    finally:
        await runtime.close()
