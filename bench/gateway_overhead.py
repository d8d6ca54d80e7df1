"""Gateway overhead: the same requests sent straight to an upstream and through coe.

Starts the fast test upstream and a gateway (embedded store) as separate processes,
then drives both with the same concurrent load and prints p50/p99 latency and
requests/s side by side. Loopback only; bounded by --requests.

    .venv/bin/python bench/gateway_overhead.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import free_port, wait_healthy  # noqa: E402 - after the path set-up

BODY = {"messages": [{"role": "user", "content": "How fast is the gateway?"}], "max_tokens": 16}


async def drive(url: str, model: str, n: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post(url, json={**BODY, "model": model})
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        for _ in range(min(50, n)):  # warm up connections
            await client.post(url, json={**BODY, "model": model})
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "n": n,
        "errors": errors,
        "rps": n / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--concurrency", default="1,16", help="comma-separated levels (1: per-request overhead)"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    up_port, gw_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[tuple[int, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "experts": [
                {
                    "name": "fast",
                    "model": "fast",
                    "endpoints": [f"http://127.0.0.1:{up_port}"],
                    "limits": {"max_concurrency": 256},
                }
            ],
            "default_expert": "fast",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
        cfg_path = Path(tmp) / "experts.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "COE_LOG_LEVEL": "WARNING", "COE_DEV_MODE": "1"}
        try:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "coe.testing", "--port", str(up_port), "--name", "fast"],
                    env=env,
                )
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "coe.cli",
                        "serve",
                        "-c",
                        str(cfg_path),
                        "--port",
                        str(gw_port),
                    ],
                    env=env,
                )
            )
            wait_healthy(f"http://127.0.0.1:{up_port}")
            wait_healthy(f"http://127.0.0.1:{gw_port}")
            for level in levels:  # direct and routed back to back at each level
                for name, port, model in (
                    ("direct to upstream", up_port, "fast"),
                    ("through coe/auto", gw_port, "coe/auto"),
                ):
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    rows.append((level, name, asyncio.run(drive(url, model, args.requests, level))))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)

    print(
        f"gateway overhead: {args.requests} requests per row, {os.cpu_count()} CPUs, "
        f"loopback, fast test upstream (client, gateway and upstream share the CPUs)"
    )
    print(f"{'conc':<6}{'path':<22}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'errors':>8}")
    for level, name, r in rows:
        print(
            f"{level:<6}{name:<22}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['rps']:>10.0f}"
            f"{r['errors']:>8.0f}"
        )
    for level in levels:
        direct, routed = (r for lv, _, r in rows if lv == level)
        print(
            f"concurrency {level}: added p50 {routed['p50_ms'] - direct['p50_ms']:.2f} ms, "
            f"throughput ratio (coe/direct) {routed['rps'] / direct['rps']:.2f}"
        )


if __name__ == "__main__":
    main()
