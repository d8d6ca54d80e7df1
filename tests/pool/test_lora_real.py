"""The lora controller against one real vLLM CPU server and three random rank-8 adapters."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coe.dispatch import ExpertClient
from coe.errors import ConfigError
from coe.experts.schema import parse_config
from coe.pool import ExpertState, OfflineSchedule, Pool, build_pools
from coe.pool.controllers.sleep import SleepController
from tests.support.net import free_port

pytestmark = pytest.mark.vllm

ADAPTERS = ["ad-x", "ad-y", "ad-z"]
BODY = {
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 8,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Path]]]:
    from coe.local.model import ensure_smollm2
    from coe.local.vllm_server import VllmServer
    from tools.lora_adapters import make_random_adapters

    base = ensure_smollm2()
    server = VllmServer(
        base,
        free_port(),
        "base",
        cpu_core=1,
        extra_args=["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"],
        extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_SERVER_DEV_MODE": "1"},
        log_path=Path(os.environ.get("COE_TEST_LOG_DIR", "/tmp")) / "coe-test-lora.log",
    )
    server.start()  # adapters are made while the server boots
    try:
        adapters = make_random_adapters(base, tmp_path_factory.mktemp("lora"), ADAPTERS)
        asyncio.run(server.wait_healthy())
        yield server.base_url, adapters
    finally:
        server.stop()


def lora_config(url: str, adapters: dict[str, Path], capacity: int) -> Any:
    return parse_config(
        {
            "experts": [
                {"name": f"e-{n}", "model": n, "endpoints": [url], "pool": "lora"} for n in ADAPTERS
            ],
            "default_expert": "e-ad-x",
            "pools": {
                "lora": {
                    "controller": "lora",
                    "capacity": capacity,
                    "max_wait_s": 30,
                    "params": {
                        "base_url": url,
                        "max_loras": 2,
                        "adapters": {f"e-{n}": str(p) for n, p in adapters.items()},
                    },
                }
            },
        }
    )


async def served_adapters(http: httpx.AsyncClient, url: str) -> set[str]:
    data = (await http.get(f"{url}/v1/models")).json()["data"]
    return {m["id"] for m in data} & set(ADAPTERS)


async def test_interleaved_requests_reach_the_right_adapter(
    lora_server: tuple[str, dict[str, Path]],
) -> None:
    url, adapters = lora_server
    cfg = lora_config(url, adapters, capacity=2)
    async with httpx.AsyncClient(timeout=120) as http:
        pools = build_pools(cfg, http)
        pool = pools.pool_of("e-ad-x")
        assert isinstance(pool, Pool)
        seen: list[int] = []

        def observe(p: Pool, expert: str, state: ExpertState) -> None:
            assert p.occupied() <= p.capacity
            seen.append(p.occupied())

        pool.observer = observe
        await pools.start()
        client = ExpertClient(http, admission=pools)
        try:
            order = [cfg.expert(f"e-{n}") for n in ADAPTERS * 3]
            answers = await asyncio.gather(*(client.complete(e, BODY) for e in order))  # type: ignore[arg-type]
            by_adapter: dict[str, set[str]] = {}
            for expert, answer in zip(order, answers, strict=True):
                assert answer["model"] == expert.model  # type: ignore[union-attr]
                by_adapter.setdefault(answer["model"], set()).add(
                    answer["choices"][0]["message"]["content"]
                )
            assert all(len(texts) == 1 for texts in by_adapter.values())  # greedy: one answer
            assert len({t for texts in by_adapter.values() for t in texts}) >= 2  # they differ
            assert pools.metrics.total_loads("lora") == 3  # x, y, then z in an idle place
            assert len(await served_adapters(http, url)) <= 2
            assert max(seen) <= 2

            # Offline: the same work grouped, starting from what is resident: one load more.
            before = pools.metrics.total_loads("lora")
            pairs = [(BODY, e.name) for e in order]  # type: ignore[union-attr]
            plan = OfflineSchedule.plan(pairs, resident=pool.resident())

            async def call(body: dict[str, Any], name: str) -> dict[str, Any]:
                spec = cfg.expert(name)
                assert spec is not None
                return await client._post_json(spec, url, {**body, "model": spec.model})

            results = await plan.run(pool, call)
            assert [r["model"] for r in results] == [e.model for e in order]  # type: ignore[union-attr]
            assert pools.metrics.total_loads("lora") - before == 1
        finally:
            await pools.close()


async def test_sleep_controller_refuses_the_cpu_backend(
    lora_server: tuple[str, dict[str, Path]],
) -> None:
    url, _ = lora_server
    async with httpx.AsyncClient(timeout=30) as http:
        with pytest.raises(ConfigError, match="cannot sleep: it runs on the CPU backend"):
            await SleepController(http, {"x": url}).start()
