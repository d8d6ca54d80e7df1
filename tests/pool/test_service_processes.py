"""The pool service as a deployment runs it: `coe pool serve` and two `coe serve` gateways as
real processes. A pool service that dies and comes back, and a swap that fails and recovers:
gateways fail over with clear errors, route around what cannot be served, and nothing hangs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coe.testing import FakeUpstream
from tests.pool.fake_lora import LoraServer
from tests.support.net import eventually, free_port, wait_healthy
from tests.support.processes import CoeProcesses, coe_processes
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]


def ask(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def write_config(path: Path, service_port: int, plain_url: str, pool: dict[str, Any]) -> Path:
    service = f"http://127.0.0.1:{service_port}"
    members = pool.pop("members")
    config = {
        "experts": [
            *({"name": n, "model": m, "endpoints": [service], "pool": "p"} for n, m in members),
            {"name": "plain", "model": "plain-m", "endpoints": [plain_url]},
        ],
        "default_expert": members[0][0],
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
        "pools": {"p": {"service": service, "state_ttl_s": 0.2, **pool}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def plain() -> Iterator[FakeUpstream]:
    with FakeUpstream("plain") as up:
        yield up


def start_deployment(procs: CoeProcesses, cfg: Path, service_port: int) -> list[httpx.Client]:
    procs.start("pool", "pool", "serve", "-c", str(cfg))
    wait_healthy(f"http://127.0.0.1:{service_port}", timeout_s=60)
    gateways = []
    for name in ("g1", "g2"):
        port = free_port()
        procs.start(name, "serve", "-c", str(cfg), "--port", str(port), "--dev")
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=60)
        gateways.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15))
    return gateways


def routed(gateway: httpx.Client) -> list[str]:
    decision = gateway.post("/v1/route", json={"query": "hello"}).json()
    return [c["expert"] for c in decision["candidates"]]


def test_a_pool_service_restart_fails_over_clearly_and_recovers(
    tmp_path: Path, plain: FakeUpstream
) -> None:
    service_port = free_port()
    with FakeUpstream("device") as device:
        pool = {
            "members": [("e-a", "model-a")],
            "controller": "static",
            "capacity": 1,
            "params": {"upstreams": {"e-a": device.base_url}},
        }
        cfg = write_config(tmp_path / "experts.yaml", service_port, plain.base_url, pool)
        with coe_processes(tmp_path) as procs:
            g1, g2 = start_deployment(procs, cfg, service_port)
            for g in (g1, g2):
                r = g.post("/v1/chat/completions", json=ask("e-a"))
                assert r.status_code == 200 and r.json()["model"] == "e-a", r.text

            procs.kill("pool")
            started = time.monotonic()
            # Routed traffic falls back to an expert that can answer; nothing waits long.
            r = g1.post("/v1/chat/completions", json=ask("coe/auto"))
            assert r.status_code == 200 and r.json()["model"] == "plain", r.text
            # A request naming the pooled expert gets a clear error, not a hang.
            r = g2.post("/v1/chat/completions", json=ask("e-a"))
            assert r.status_code == 502, r.text
            error = r.json()["error"]
            assert "e-a" in error["message"] and "unreachable" in error["message"], error
            assert error["code"] == "expert_unreachable", error
            assert time.monotonic() - started < 10
            # Both gateways stop offering it once they see the service gone.
            eventually(lambda: routed(g1) == routed(g2) == ["plain"], 5, "routed around")

            procs.start("pool", "pool", "serve", "-c", str(cfg))
            wait_healthy(f"http://127.0.0.1:{service_port}", timeout_s=60)
            eventually(lambda: routed(g1) == routed(g2) == ["e-a", "plain"], 5, "offered again")
            for g in (g1, g2):
                r = g.post("/v1/chat/completions", json=ask("coe/auto"))
                assert r.status_code == 200 and r.json()["model"] == "e-a", r.text


def test_a_failed_swap_is_routed_around_and_offered_again(
    tmp_path: Path, plain: FakeUpstream
) -> None:
    lora = LoraServer(max_loras=1)
    served = ServedApp(lora.app).start()
    try:
        lora.fail.add("ad-y")  # the device refuses this adapter until the fault clears
        service_port = free_port()
        adapters = {"e-y": "/adapters/y", "e-x": "/adapters/x"}
        pool = {
            "members": [("e-y", "ad-y"), ("e-x", "ad-x")],
            "controller": "lora",
            "capacity": 1,
            "retry_after_s": 2,
            "params": {"base_url": served.base_url, "max_loras": 1, "adapters": adapters},
        }
        cfg = write_config(tmp_path / "experts.yaml", service_port, plain.base_url, pool)
        with coe_processes(tmp_path) as procs:
            g1, g2 = start_deployment(procs, cfg, service_port)
            r = g1.post("/v1/chat/completions", json=ask("coe/auto"))
            body = r.json()
            assert r.status_code == 200 and body["model"] == "e-x", r.text  # next ranked
            assert body["coe"]["failures"][0]["expert"] == "e-y"
            assert body["coe"]["failures"][0]["status"] == 503
            eventually(lambda: routed(g2) == ["e-x", "plain"], 5, "e-y routed around")
            lora.fail.clear()
            eventually(lambda: routed(g2) == ["e-y", "e-x", "plain"], 10, "e-y offered again")
            r = g2.post("/v1/chat/completions", json=ask("coe/auto"))
            assert r.status_code == 200 and r.json()["model"] == "e-y", r.text
            assert lora.peak == 1  # never more adapters than the device holds
    finally:
        served.stop()
