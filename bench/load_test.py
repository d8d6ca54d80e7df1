"""Load test: a steady request rate through the gateway while experts fail at random.

Three fast test upstreams (separate processes) back three experts; two of them
answer 5xx to a share of requests, so the gateway must retry and fall back.
Open-loop: requests are sent on schedule whatever the latency. Loopback only,
bounded by --rate times --seconds. Reports sent, answered, errors, lost, p50/p99.

    .venv/bin/python bench/load_test.py [--rate 300] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import free_port, wait_healthy  # noqa: E402 - after the path set-up

FAULTS = [  # (expert, share of requests answered with 500)
    ("alpha", 0.2),
    ("beta", 0.1),
    ("gamma", 0.0),
]


async def run_load(url: str, rate: float, seconds: float, timeout_s: float) -> dict[str, object]:
    body = {"model": "coe/auto", "messages": [{"role": "user", "content": "load"}], "max_tokens": 8}
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    answered_by: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json=body)
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1
                return
            latencies.append(time.perf_counter() - t0)
            statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                answered_by[r.headers.get("x-coe-expert", "?")] += 1

        total = int(rate * seconds)
        tasks = []
        started = time.perf_counter()
        for i in range(total):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        send_wall = time.perf_counter() - started
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    latencies.sort()
    answered = statuses.get("200", 0)
    seen = sum(statuses.values())
    return {
        "sent": total,
        "answered": answered,
        "errors": seen - answered,
        "lost": total - seen,
        "statuses": dict(statuses),
        "answered_by": dict(answered_by),
        "achieved_rps": total / send_wall,
        "wall_s": wall,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    if args.rate * args.seconds > 100_000:
        parser.error("bounded: at most 100,000 requests")

    env = {**os.environ, "COE_LOG_LEVEL": "WARNING", "COE_DEV_MODE": "1"}
    ports = {name: free_port() for name, _ in FAULTS}
    gw_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "experts.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "experts": [
                        {
                            "name": n,
                            "model": n,
                            "endpoints": [f"http://127.0.0.1:{p}"],
                            "limits": {"max_concurrency": 512, "timeout_s": 10},
                        }
                        for n, p in ports.items()
                    ],
                    "default_expert": "alpha",
                    "pipelines": {"auto": {"routers": ["default"]}},
                    "routers_dirs": [str(REPO / "routers")],
                }
            )
        )
        try:
            for name, port in ports.items():
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "coe.testing", "--port", str(port), "--name", name],
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
                        str(cfg),
                        "--port",
                        str(gw_port),
                    ],
                    env=env,
                )
            )
            for port in [*ports.values(), gw_port]:
                wait_healthy(f"http://127.0.0.1:{port}")
            for name, share in FAULTS:
                if share:
                    httpx.post(
                        f"http://127.0.0.1:{ports[name]}/_fault",
                        json={"mode": "status", "status": 500, "fail_rate": share},
                    )
            result = asyncio.run(
                run_load(
                    f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                    args.rate,
                    args.seconds,
                    timeout_s=30,
                )
            )
            metrics = httpx.get(f"http://127.0.0.1:{gw_port}/metrics").text
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
    fallbacks = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("coe_fallbacks_total{")
    )
    print(
        f"load test: {args.rate:.0f} req/s for {args.seconds:.0f} s through coe/auto, "
        f"faults {', '.join(f'{n} {s:.0%} 5xx' for n, s in FAULTS)}; {os.cpu_count()} CPUs"
    )
    for key in ("sent", "answered", "errors", "lost"):
        print(f"  {key:<10}{result[key]}")
    print(f"  rate      {result['achieved_rps']:.1f} req/s sent; wall {result['wall_s']:.1f} s")
    print(f"  latency   p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
    print(f"  statuses  {result['statuses']}")
    print(f"  answered by {result['answered_by']}; fallbacks counted {fallbacks:.0f}")
    if result["lost"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
