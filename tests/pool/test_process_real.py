"""The process controller with two real vLLM CPU servers of the small model, capacity 1."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from coe.dispatch import ExpertClient
from coe.experts.schema import ExpertSpec, parse_config
from coe.pool import ExpertState, Pool, build_pools
from tests.support.net import free_port

pytestmark = pytest.mark.vllm

BODY = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 8,
    "temperature": 0,
}


async def test_interleaved_requests_swap_each_expert_in_once() -> None:
    ports = {"p1": free_port(), "p2": free_port()}
    cfg = parse_config(
        {
            "experts": [
                {
                    "name": n,
                    "model": f"smol-{n}",
                    "endpoints": [f"http://127.0.0.1:{port}"],
                    "pool": "cpu",
                }
                for n, port in ports.items()
            ],
            "default_expert": "p1",
            "pools": {
                "cpu": {
                    "controller": "process",
                    "capacity": 1,
                    "max_wait_s": 120,
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
    async with httpx.AsyncClient(timeout=120) as http:
        pools = build_pools(cfg, http)
        pool = pools.pool_of("p1")
        assert isinstance(pool, Pool)

        def observe(p: Pool, expert: str, state: ExpertState) -> None:
            assert p.occupied() <= p.capacity

        pool.observer = observe
        await pools.start()
        client = ExpertClient(http, admission=pools)
        try:
            order: list[ExpertSpec] = [cfg.expert(n) for n in ["p1", "p2"] * 3]  # type: ignore[misc]
            answers = await asyncio.gather(*(client.complete(e, BODY) for e in order))
            assert [a["model"] for a in answers] == [e.model for e in order]
            assert all(a["choices"][0]["message"]["content"] for a in answers)
            # Interleaved arrivals, but each expert started once: the queue was served whole.
            assert pools.metrics.total_loads("cpu") == 2
            assert pools.metrics.unloads["cpu", "p1"] == 1
            assert pool.resident() == ["p2"] and pool.state("p1") is ExpertState.STOPPED
            assert pools.metrics.swap_time("cpu") > 1.0
        finally:
            await pools.close()
