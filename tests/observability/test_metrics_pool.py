"""Every metric a pool service exports moves: its LoRA pool (one place, three experts, the
real `lora` controller on a miniature LoRA server) swaps, queues a call behind an open
stream, and fails a load; then every family of its /metrics must show a sample above 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from tests.observability.test_metrics_move import Scrape, still
from tests.pool.fake_lora import LoraServer
from tests.pool.test_service import LORA_MODELS, chat, lora_pool, pool_config, service
from tests.support.asgi import HostRouter

CHAT = "/v1/chat/completions"
# Gauges that read 0 whenever nothing is in flight or nothing failed at the moment.
AT_REST = {
    "coe_pool_active": "calls in flight at the scrape",
}


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 10
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def queued(client: httpx.AsyncClient, expert: str) -> bool:
    state = (await client.get("/pool/state")).json()["pools"]["p"]["experts"]
    return bool(state[expert]["queue"] == 1)


async def test_every_pool_service_metric_moves() -> None:
    lora = LoraServer(max_loras=1)
    lora.fail.add("ad-z")
    config = pool_config(lora_pool(lora, lora.base_url, 1, retry_after_s=60), LORA_MODELS)
    async with service(config, HostRouter().mount(lora.base_url, lora.app)) as client:
        assert (await client.post(CHAT, json=chat("ad-x"))).status_code == 200
        # A stream held open on x: a call for y queues behind it.
        lora.gate.clear()
        held = asyncio.create_task(client.post(CHAT, json=chat("ad-x", stream=True)))
        waiting = asyncio.create_task(client.post(CHAT, json=chat("ad-y")))
        await until(lambda: queued(client, "e-y"), "the call for y never queued")
        during = Scrape((await client.get("/metrics")).text)
        lora.gate.set()
        assert (await held).status_code == 200 and (await waiting).status_code == 200
        assert (await client.post(CHAT, json=chat("ad-z"))).status_code == 503  # load fails
        assert (await client.post(CHAT, json=chat("ad-x"))).status_code == 200
        after = Scrape((await client.get("/metrics")).text)
    assert during.value("coe_pool_queue_depth", expert="e-y") == 1
    assert during.value("coe_pool_active", expert="e-x") == 1
    families = set(after.families) - {"coe_pool_queue_depth", *AT_REST}
    assert still(after, families) == []
    # x loaded, y for x, z for y (its load failed), x again: four swaps, three loads done
    assert after.value("coe_pool_swaps", "_total", pool="p") == 4
    assert after.value("coe_pool_wake_seconds", "_count") == 3
    assert after.value("coe_pool_wake_seconds", "_count", expert="e-x") == 2
    assert after.value("coe_pool_failures", "_total", expert="e-z") == 1
    resident = {
        (s.labels["expert"], s.labels["state"])
        for s in after.samples("coe_pool_resident")
        if s.value == 1
    }
    assert resident == {("e-x", "resident"), ("e-y", "unloaded"), ("e-z", "unloaded")}
    shown = {s.labels["state"] for s in after.samples("coe_pool_resident")}
    assert shown == {"resident", "asleep", "loading", "unloaded"}
