"""Every metric the gateway exports moves under load: a real gateway (in process) and fake
experts take streamed and whole chats, a fallback, /v1/route and a batch job run by the
gateway's own worker; then every family its registry holds must show a sample above 0
(a histogram: a count above 0), save the few that only move on faults, listed with why."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.testing import Fault
from tests.support.asgi import InProcessUpstream, asgi_client, route_to, running_gateway

REPO = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"
DELAY_S = 0.3  # the experts' answer time in the overhead test

# Families that move only on a fault or a limit, which this load does not cause.
MOVE_ONLY_ON_FAULTS = {
    "coe_rate_limited": "a key over its rate limit",
    "coe_store_circuit_open": "1 only while the store is unreachable",
    "coe_batch_unit_errors": "a batch unit that raises",
    "coe_batch_units_given_up": "a batch unit that failed too often",
    "coe_batch_sweeper_requeued": "a job left with no work queued",
    "coe_batch_queue_depth": "units waiting at the moment of the worker's look (0 once done)",
}


# -- reading /metrics --------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """One /metrics text, parsed: families by name (a counter's without `_total`)."""

    def __init__(self, text: str):
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, family: str, suffix: str = "") -> list[Sample]:
        f = self.families.get(family)
        if f is None:
            return []
        name = family + suffix
        return [Sample(s.name, dict(s.labels), s.value) for s in f.samples if s.name == name]

    def moved(self, family: str) -> bool:
        """A sample above 0: a histogram's count, a counter's total, a gauge's value."""
        kind = self.families[family].type
        suffix = {"histogram": "_count", "counter": "_total"}.get(kind, "")
        return any(s.value > 0 for s in self.samples(family, suffix))

    def value(self, family: str, suffix: str = "", **labels: str) -> float:
        """The sum of the samples whose labels include `labels`."""
        return sum(
            s.value
            for s in self.samples(family, suffix)
            if all(s.labels.get(k) == v for k, v in labels.items())
        )


def still(scrape: Scrape, families: Iterable[str]) -> list[str]:
    return sorted(f for f in families if not scrape.moved(f))


# -- the gateway ---------------------------------------------------------------------------
def config(urls: list[str]) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {"name": name, "model": f"{name}-m", "endpoints": [url]}
                for name, url in zip(("alpha", "beta"), urls, strict=True)
            ],
            "default_expert": "alpha",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "coe/auto", "messages": [{"role": "user", "content": text}], **extra}


@dataclass
class Gateway:
    client: httpx.AsyncClient
    experts: list[InProcessUpstream]
    registry_families: set[str]

    async def scrape(self) -> Scrape:
        r = await self.client.get("/metrics")
        assert r.status_code == 200, r.text
        return Scrape(r.text)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A gateway on the embedded store, so its own worker runs batch jobs."""
    experts = [InProcessUpstream("up0"), InProcessUpstream("up1")]
    settings = Settings(dev_mode=True, batch_chunk=2)
    cfg = config([e.base_url for e in experts])
    async with running_gateway(settings, cfg, route_to(*experts)) as app:
        families = {m.name for m in app.state.runtime.metrics.registry.collect()}
        async with asgi_client(app, timeout=10) as client:
            yield Gateway(client, experts, families)


async def run_batch(client: httpx.AsyncClient, lines: int) -> dict[str, Any]:
    content = "\n".join(
        json.dumps({"custom_id": f"q{i}", "body": ask(f"line {i}")}) for i in range(lines)
    )
    r = await client.post("/v1/batches", files={"file": ("in.jsonl", content)})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    deadline = time.monotonic() + 60
    while job["status"] != "completed":
        assert time.monotonic() < deadline, f"the batch did not finish: {job}"
        await asyncio.sleep(0.1)
        job = (await client.get(f"/v1/batches/{job['id']}")).json()
    return job


async def scrape_when(gw: Gateway, ready: Any) -> Scrape:
    """Scrape until `ready(scrape)` (snapshots refreshed in the background), for 30 s."""
    deadline = time.monotonic() + 30
    while not ready(scrape := await gw.scrape()):
        assert time.monotonic() < deadline, "the metrics never showed it"
        await asyncio.sleep(0.2)
    return scrape


async def load(gw: Gateway) -> dict[str, Any]:
    """Whole and streamed chats, one fallback, a route, and a batch job of 3 lines."""
    c = gw.client
    assert (await c.post(CHAT, json=ask("whole"))).status_code == 200
    streamed = ask("streamed please", stream=True, stream_options={"include_usage": True})
    r = await c.post(CHAT, json=streamed)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    gw.experts[0].fault = Fault(mode="status", status=500, times=1)  # alpha fails once
    r = await c.post(CHAT, json=ask("fall back"))
    assert r.status_code == 200 and r.headers["x-coe-expert"] == "beta"
    r = await c.post("/v1/route", json={"model": "coe/auto", "query": "where to?"})
    assert r.status_code == 200
    return await run_batch(c, lines=3)


async def test_every_gateway_metric_moves(gateway: Gateway) -> None:
    job = await load(gateway)
    done = {"batch": job["id"], "status": "completed"}
    scrape = await scrape_when(gateway, lambda s: s.value("coe_batch_job_lines", **done) == 3)
    unknown = set(MOVE_ONLY_ON_FAULTS) - gateway.registry_families
    assert not unknown, f"listed as moving only on faults, but not exported: {unknown}"
    watched = gateway.registry_families - set(MOVE_ONLY_ON_FAULTS)
    assert "coe_batch_job_lines" in watched and "coe_expert_ttft_seconds" in watched
    assert still(scrape, watched) == []
    # The job's lines, as the store has them.
    assert scrape.value("coe_batch_job_lines", batch=job["id"], status="total") == 3
    assert scrape.value("coe_batch_job_lines", batch=job["id"], status="failed") == 0
    assert scrape.value("coe_batch_items", "_total", status="completed") == 3


async def test_each_new_observation_counts_what_it_says(gateway: Gateway) -> None:
    await load(gateway)
    s = await gateway.scrape()
    count = "_count"
    # Decisions: 3 chats and a route (online), and the batch's 3 lines, each by `default`.
    assert s.value("coe_route_decision_seconds", count, pipeline="auto", router="default") == 7
    # Time to first token: the one streamed call only.
    assert s.value("coe_expert_ttft_seconds", count) == 1
    assert s.value("coe_expert_ttft_seconds", count, expert="alpha") == 1
    # Tokens per second: every call whose usage came back (the failed one sent none).
    assert s.value("coe_expert_tokens_per_second", count) == 6
    # Latency: every replica attempt, the failed one, the stream (at its end) and batch lines.
    assert s.value("coe_expert_latency_seconds", count, outcome="error") == 1
    assert s.value("coe_expert_latency_seconds", count, outcome="ok") == 6
    # Tokens from the stream's usage chunk too: the fake answers 5 prompt tokens a call.
    assert s.value("coe_tokens", "_total", kind="prompt") == 5 * 6
    assert s.value("coe_gateway_overhead_seconds", count, path=CHAT) == 3
    assert s.value("coe_gateway_overhead_seconds", count, path="/v1/route") == 1


async def test_the_overhead_leaves_out_the_experts_time(gateway: Gateway) -> None:
    """Each expert takes DELAY_S to answer: the request's latency has it, its overhead not
    (streamed or not). Sums over the two requests, so no single timing is compared."""
    for e in gateway.experts:
        e.fault = Fault(delay_s=DELAY_S)
    c = gateway.client
    assert (await c.post(CHAT, json=ask("slow"))).status_code == 200
    r = await c.post(CHAT, json=ask("slow stream", stream=True))
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    s = await gateway.scrape()
    latency = s.value("coe_request_latency_seconds", "_sum", path=CHAT)
    overhead = s.value("coe_gateway_overhead_seconds", "_sum", path=CHAT)
    assert s.value("coe_gateway_overhead_seconds", "_count", path=CHAT) == 2
    assert latency - overhead >= 2 * DELAY_S
    assert overhead >= 0
