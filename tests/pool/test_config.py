"""Pools in experts.yaml, building them, and the sleep controller refusing a CPU backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from coe.dispatch import ExpertClient
from coe.errors import ConfigError
from coe.experts.schema import parse_config
from coe.pool import ExpertState, build_pools
from coe.pool.controllers import LoraController, SleepController, sleep_refusal


def config(**pool: Any) -> dict[str, Any]:
    return {
        "experts": [
            {"name": "x", "model": "ad-x", "endpoints": ["http://127.0.0.1:9"], "pool": "gpu0"},
            {"name": "y", "model": "ad-y", "endpoints": ["http://127.0.0.1:9"], "pool": "gpu0"},
            {"name": "z", "model": "m", "endpoints": ["http://127.0.0.1:9"]},
        ],
        "default_expert": "z",
        "pools": {"gpu0": pool},
    }


def test_pools_parse_and_unknown_pool_is_refused() -> None:
    cfg = parse_config(config(controller="static", capacity=2, max_wait_s=5))
    assert cfg.pools["gpu0"].capacity == 2 and cfg.expert("x").pool == "gpu0"  # type: ignore[union-attr]
    bad = config(controller="static", capacity=2)
    bad["experts"][2]["pool"] = "nope"
    with pytest.raises(ConfigError, match="unknown pool 'nope'"):
        parse_config(bad)
    with pytest.raises(ConfigError, match="controller"):
        parse_config(config(controller="teleport", capacity=1))


async def test_static_pool_admits_through_the_client_hook() -> None:
    cfg = parse_config(config(controller="static", capacity=2))
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
            client = ExpertClient(http, admission=pools)
            assert client.admission is pools
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


async def test_gateway_services_build_pass_and_close_the_pools() -> None:
    from coe.config import Settings
    from coe.gateway.services import build_services

    cfg = parse_config(config(controller="static", capacity=2))
    services = await build_services(Settings(dev_mode=True), cfg, serve_admin=False)
    try:
        assert services.pools is not None and services.client.admission is services.pools
        pool = services.pools.pool_of("x")
        assert pool is not None and pool.resident() == ["x", "y"]
    finally:
        await services.close()
    assert pool._scheduler is not None and pool._scheduler.done()
