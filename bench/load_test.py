"""Load test: a steady request rate through the gateway while experts fail at random.

Three fast test upstreams (separate processes) back three experts; two of them
answer 5xx to a share of requests, so the gateway must retry and fall back.
Open-loop: requests are sent on schedule whatever the latency. Loopback only,
bounded by --rate times --seconds. Every request carries a unique id (the
x-request-id header, echoed by the gateway, and the prompt, echoed by the expert), and
the books are kept per id: sent, answered (any status), dropped (no response), still
unanswered when the run ends, mixed up (a reply that was not to this request). Lost is
the sent ids with no answer; it exits 1 when any is lost or mixed up. Also p50/p99.

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
import uuid
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


def _content(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


async def run_load(
    url: str, rate: float, seconds: float, timeout_s: float, drain_s: float
) -> dict[str, object]:
    """Every request carries its own id (header and prompt); the books are kept per id:
    sent, answered with a status (the id echoed back), dropped (no response: a transport
    error), or unanswered when the run ends. Lost = sent ids with no answer."""
    run = uuid.uuid4().hex[:8]
    sent: set[str] = set()
    answered: dict[str, int] = {}  # id -> status, for replies that echoed this request's id
    dropped: dict[str, str] = {}  # id -> transport error
    mixed_up: list[str] = []  # ids whose reply did not belong to them
    latencies: list[float] = []
    answered_by: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def one(rid: str) -> None:
            body = {
                "model": "coe/auto",
                "messages": [{"role": "user", "content": f"load {rid}"}],
                "max_tokens": 8,
            }
            t0 = time.perf_counter()
            sent.add(rid)
            try:
                r = await client.post(url, json=body, headers={"x-request-id": rid})
            except httpx.HTTPError as err:
                dropped[rid] = type(err).__name__
                return
            latencies.append(time.perf_counter() - t0)
            echoed = r.headers.get("x-request-id", "")
            if echoed != rid:
                mixed_up.append(rid)
                return
            answered[rid] = r.status_code
            if r.status_code == 200:
                # the fake expert echoes the prompt: the answer must be to this request
                if not _content(r).endswith(f"load {rid}"):
                    mixed_up.append(rid)
                answered_by[r.headers.get("x-coe-expert", "?")] += 1

        total = int(rate * seconds)
        tasks = []
        started = time.perf_counter()
        for i in range(total):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(f"load-{run}-{i}")))
        send_wall = time.perf_counter() - started
        _, pending = await asyncio.wait(tasks, timeout=timeout_s + drain_s)
        for task in pending:  # the run is over: whatever has no answer now never got one
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - started
    latencies.sort()
    lost = sent - set(answered)
    unanswered = lost - set(dropped) - set(mixed_up)
    statuses = Counter(str(code) for code in answered.values())
    statuses.update(dropped.values())
    ok = sum(1 for code in answered.values() if code == 200)
    return {
        "scheduled": total,
        "sent": len(sent),
        "answered": ok,
        "errors": len(answered) - ok,
        "dropped": len(dropped),
        "unanswered": len(unanswered),
        "mixed_up": len(mixed_up),
        "lost": len(lost),
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
    parser.add_argument("--timeout", type=float, default=30, help="per request, seconds")
    parser.add_argument(
        "--drain", type=float, default=5, help="after the last send and a timeout, seconds"
    )
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
                    timeout_s=args.timeout,
                    drain_s=args.drain,
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
    for key in ("sent", "answered", "errors", "dropped", "unanswered", "mixed_up", "lost"):
        print(f"  {key:<11}{result[key]}")
    print(f"  rate      {result['achieved_rps']:.1f} req/s sent; wall {result['wall_s']:.1f} s")
    print(f"  latency   p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
    print(f"  statuses  {result['statuses']}")
    print(f"  answered by {result['answered_by']}; fallbacks counted {fallbacks:.0f}")
    if result["lost"] or result["mixed_up"] or result["sent"] != result["scheduled"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
