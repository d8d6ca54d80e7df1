"""Swaps and wall time of a batch in per-query order vs grouped by expert, on real vLLM CPU servers.

Capacity 1, 3 experts, N queries in a seeded random expert order; both orders run from an
empty pool, side by side, for the `process` controller (one server per expert, several
minutes) and the `lora` controller (three random rank-8 adapters on one server).

    .venv/bin/python bench/pool_bench.py [--controller process|lora|both] [--queries 30]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from coe.experts.schema import CoeConfig, parse_config
from coe.local.model import ensure_smollm2
from coe.local.vllm_server import VllmServer
from coe.pool import OfflineSchedule, Pool, PoolMetrics, build_pools, run_in_order

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import free_port  # noqa: E402 - after the path set-up
from tools.lora_adapters import make_random_adapters  # noqa: E402

EXPERTS = ["e0", "e1", "e2"]
LOG_DIR = Path(tempfile.gettempdir())


def process_config() -> CoeConfig:
    ports = {e: free_port() for e in EXPERTS}
    servers = {
        e: {"served_model_name": f"smol-{e}", "port": p, "cpu_core": i % 2}
        for i, (e, p) in enumerate(ports.items())
    }
    return parse_config(
        {
            "experts": [
                {
                    "name": e,
                    "model": f"smol-{e}",
                    "endpoints": [f"http://127.0.0.1:{p}"],
                    "pool": "bench",
                }
                for e, p in ports.items()
            ],
            "default_expert": "e0",
            "pools": {
                "bench": {
                    "controller": "process",
                    "capacity": 1,
                    "max_wait_s": 600,
                    "params": {"servers": servers},
                }
            },
        }
    )


def lora_config(url: str, adapters: dict[str, Path]) -> CoeConfig:
    return parse_config(
        {
            "experts": [
                {"name": e, "model": f"ad-{e}", "endpoints": [url], "pool": "bench"}
                for e in EXPERTS
            ],
            "default_expert": "e0",
            "pools": {
                "bench": {
                    "controller": "lora",
                    "capacity": 1,
                    "max_wait_s": 600,
                    "params": {
                        "base_url": url,
                        "max_loras": 1,
                        "adapters": {e: str(adapters[f"ad-{e}"]) for e in EXPERTS},
                    },
                }
            },
        }
    )


Runner = Callable[
    [Pool, list[tuple[str, str]], Callable[[str, str], Awaitable[str]]], Awaitable[list[str]]
]


async def per_query(
    pool: Pool, pairs: list[tuple[str, str]], call: Callable[[str, str], Awaitable[str]]
) -> list[str]:
    return await run_in_order(pool, pairs, call)


def grouped(concurrency: int) -> Runner:
    async def run(
        pool: Pool, pairs: list[tuple[str, str]], call: Callable[[str, str], Awaitable[str]]
    ) -> list[str]:
        plan = OfflineSchedule.plan(pairs, resident=pool.resident())
        return await plan.run(pool, call, concurrency=concurrency)

    return run


async def measure(
    cfg: CoeConfig, pairs: list[tuple[str, str]], runner: Runner, max_tokens: int
) -> dict[str, Any]:
    """One run from an empty pool: loads, swap seconds, wall seconds."""
    async with httpx.AsyncClient(timeout=300) as http:
        metrics = PoolMetrics()
        pools = build_pools(cfg, http, metrics)
        pool = pools.pool_of(EXPERTS[0])
        assert pool is not None
        await pools.start()
        for name in pool.resident():  # adapters left from an earlier run: start empty
            await pool.controller.unload(name)
        await pools.close()
        pools = build_pools(cfg, http, metrics)
        pool = pools.pool_of(EXPERTS[0])
        assert pool is not None
        await pools.start()

        async def call(query: str, expert: str) -> str:
            spec = cfg.expert(expert)
            assert spec is not None
            body = {
                "model": spec.model,
                "messages": [{"role": "user", "content": query}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            resp = await http.post(f"{spec.base_urls()[0]}/v1/chat/completions", json=body)
            resp.raise_for_status()
            data = resp.json()
            assert data["model"] == spec.model, (data["model"], spec.model)
            return str(data["choices"][0]["message"]["content"])

        started = time.monotonic()
        try:
            await runner(pool, pairs, call)
            wall = time.monotonic() - started
        finally:
            for name in pool.resident():
                await pool.controller.unload(name)
            await pools.close()
    return {
        "loads": metrics.total_loads("bench"),
        "swap_s": metrics.swap_time("bench"),
        "wall_s": wall,
    }


async def bench(
    controller: str, pairs: list[tuple[str, str]], args: argparse.Namespace
) -> list[tuple[str, dict[str, Any]]]:
    server: VllmServer | None = None
    if controller == "process":
        cfg = process_config()
    else:
        base = ensure_smollm2()
        server = VllmServer(
            base,
            free_port(),
            "base",
            cpu_core=1,
            extra_args=["--enable-lora", "--max-lora-rank", "8", "--max-loras", "1"],
            extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
            log_path=LOG_DIR / "coe-bench-lora.log",
        )
        server.start()
    try:
        if server is not None:
            tmp = Path(tempfile.mkdtemp(prefix="coe-bench-lora-"))
            adapters = make_random_adapters(base, tmp, [f"ad-{e}" for e in EXPERTS])
            await server.wait_healthy()
            cfg = lora_config(server.base_url, adapters)
        out = []
        for label, runner in (
            ("per-query order", per_query),
            ("grouped by expert", grouped(args.concurrency)),
        ):
            print(f"  {controller}: running {label} ...", flush=True)
            out.append((label, await measure(cfg, pairs, runner, args.max_tokens)))
        return out
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--controller", choices=["process", "lora", "both"], default="both")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="calls at once within a group (1: only the order differs)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pairs = [(f"Say the number {i} in words.", rng.choice(EXPERTS)) for i in range(args.queries)]
    changes = 1 + sum(1 for a, b in itertools.pairwise(pairs) if a[1] != b[1])
    print(
        f"{args.queries} queries over {len(EXPERTS)} experts (seed {args.seed}), "
        f"capacity 1, {changes} expert changes in arrival order"
    )
    controllers = ["lora", "process"] if args.controller == "both" else [args.controller]
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for controller in controllers:
        for label, result in asyncio.run(bench(controller, pairs, args)):
            rows.append((controller, label, result))
    print(f"\n{'controller':<10} {'order':<18} {'loads':>6} {'swap s':>8} {'wall s':>8}")
    for controller, label, r in rows:
        print(
            f"{controller:<10} {label:<18} {r['loads']:>6} {r['swap_s']:>8.1f} {r['wall_s']:>8.1f}"
        )
    for controller in controllers:
        a, b = (r for c, _, r in rows if c == controller)
        print(
            f"{controller}: grouped needs {a['loads'] / max(b['loads'], 1):.1f}x fewer loads "
            f"and is {a['wall_s'] / b['wall_s']:.1f}x faster in wall time"
        )


if __name__ == "__main__":
    main()
