"""The process controller behind one pool service: two real vLLM CPU servers, capacity 1,
and two `coe serve` gateways sending interleaved requests for both at once. The pool starts
each server once and never runs both: the device holds one model however many gateways."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.net import free_port, wait_healthy
from tests.support.processes import coe_processes

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def metric(service: str, name: str) -> float:
    text = httpx.get(f"{service}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def test_two_gateways_one_pool_each_server_started_once(tmp_path: Path) -> None:
    service = f"http://127.0.0.1:{free_port()}"
    ports = {"p1": free_port(), "p2": free_port()}
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {
                        "name": n,
                        "model": f"smol-{n}",
                        "endpoints": [service],
                        "pool": "cpu",
                        "limits": {"timeout_s": 600},
                        "defaults": {"temperature": 0, "max_tokens": 8},
                    }
                    for n in ports
                ],
                "default_expert": "p1",
                "pipelines": {"auto": {"routers": ["default"]}},
                "routers_dirs": [str(REPO / "routers")],
                "pools": {
                    "cpu": {
                        "service": service,
                        "controller": "process",
                        "capacity": 1,
                        "max_wait_s": 300,
                        "params": {
                            "servers": {
                                n: {"served_model_name": f"smol-{n}", "port": port, "cpu_core": i}
                                for i, (n, port) in enumerate(ports.items())
                            }
                        },
                    }
                },
            }
        )
    )
    with coe_processes(tmp_path, {"COE_EXPERTS_FILE": str(cfg)}) as procs:
        procs.start("pool", "pool", "serve", "-c", str(cfg))
        wait_healthy(service, timeout_s=120)
        gateways = []
        for name in ("g1", "g2"):
            port = free_port()
            procs.start(name, "serve", "--port", str(port), "--dev")
            gateways.append(f"http://127.0.0.1:{port}")
        for g in gateways:
            wait_healthy(g, timeout_s=120)
        # p1, p2, p1, p2, ... from both gateways at once: 7 expert changes in sending order.
        sent = [(gateways[(i // 2) % 2], ["p1", "p2"][i % 2]) for i in range(8)]

        def chat(gateway: str, model: str) -> dict[str, Any]:
            body = {"model": model, "messages": QUESTION}
            r = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=600)
            assert r.status_code == 200, r.text
            return dict(r.json())

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda gm: chat(*gm), sent))
        state = httpx.get(f"{service}/pool/state", timeout=5).json()["pools"]["cpu"]
        loads = metric(service, "coe_pool_loads_total")
        unloads = metric(service, "coe_pool_unloads_total")
        swap_s = metric(service, "coe_pool_swap_seconds_sum")

    for (_, model), answer in zip(sent, answers, strict=True):
        assert answer["model"] == model
        assert answer["coe"]["upstream_model"] == f"smol-{model}"
        assert answer["choices"][0]["message"]["content"]
    changes = sum(1 for a, b in itertools.pairwise(sent) if a[1] != b[1])
    print(f"pool: {loads:.0f} loads, {unloads:.0f} unloads, {swap_s:.1f} s swapping")
    assert changes == 7 and loads == 2 and unloads == 1  # each server started once
    assert state["occupied"] == 1
    assert [e for e, s in state["experts"].items() if s["state"] == "resident"] in (["p1"], ["p2"])
