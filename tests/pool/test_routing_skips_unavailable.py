"""A gateway routes around an expert its pool service cannot swap in, and offers it again
once the pool retries: the gateway holds no pool, only the service's published state."""

from __future__ import annotations

import asyncio
from pathlib import Path

from coe.config import Settings
from coe.experts.schema import parse_config
from coe.pool_service import create_pool_app
from tests.pool.fake_lora import LoraServer
from tests.support.asgi import InProcessUpstream, asgi_client, route_to, running_gateway

REPO = Path(__file__).resolve().parents[2]
SERVICE = "http://pool.test:8200"
ASK = {"model": "coe/auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def test_the_gateway_routes_around_what_its_pool_cannot_load() -> None:
    lora = LoraServer(max_loras=1)
    lora.fail.add("ad-y")  # the device refuses this adapter until the fault clears
    plain = InProcessUpstream("plain")
    config = parse_config(
        {
            "experts": [
                {"name": "e-y", "model": "ad-y", "endpoints": [SERVICE], "pool": "p"},
                {"name": "plain", "model": "m", "endpoints": [plain.base_url]},
            ],
            "default_expert": "e-y",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
            "pools": {
                "p": {
                    "service": SERVICE,
                    "state_ttl_s": 0.05,
                    "controller": "lora",
                    "capacity": 1,
                    "retry_after_s": 0.5,
                    "params": {
                        "base_url": lora.base_url,
                        "max_loras": 1,
                        "adapters": {"e-y": "/adapters/y"},
                    },
                }
            },
        }
    )
    pool_app = create_pool_app(config, transport=route_to().mount(lora.base_url, lora.app))
    to_experts = route_to(plain).mount(SERVICE, pool_app)
    async with (
        pool_app.router.lifespan_context(pool_app),
        running_gateway(Settings(dev_mode=True), config, to_experts) as gateway,
        asgi_client(gateway) as client,
    ):
        # The pool service answers 503 expert_unavailable: the gateway falls back at once.
        first = (await client.post("/v1/chat/completions", json=ASK)).json()
        assert first["model"] == "plain"
        assert [f["expert"] for f in first["coe"]["failures"]] == ["e-y"]
        assert first["coe"]["failures"][0]["status"] == 503
        # Once the service publishes it unavailable, routing leaves it out up front.
        await asyncio.sleep(0.15)
        routed = (await client.post("/v1/route", json={"query": "hi"})).json()
        assert [c["expert"] for c in routed["candidates"]] == ["plain"]
        second = (await client.post("/v1/chat/completions", json=ASK)).json()
        assert second["model"] == "plain" and second["coe"]["failures"] == []
        # The fault clears; after retry_after_s the pool offers it again and it answers.
        lora.fail.clear()
        await asyncio.sleep(0.6)
        back = (await client.post("/v1/route", json={"query": "hi"})).json()
        assert [c["expert"] for c in back["candidates"]] == ["e-y", "plain"]
        answered = (await client.post("/v1/chat/completions", json=ASK)).json()
        assert answered["model"] == "e-y"
        assert answered["choices"][0]["message"]["content"].startswith("[ad-y]")
