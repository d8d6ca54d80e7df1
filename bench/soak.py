"""Soak benchmark: a steady open-loop load over two gateway replicas while their parts fail.

Starts everything itself on loopback (its own redis-server, three fake experts, two
`coe serve` replicas on that Redis, one `coe worker`), sends `--rate` chat requests/s
(named experts and `coe/auto`, routed by the embedding router), and on a schedule scaled
to `--minutes`: kills upstreams (-9) and restarts them, restarts Redis empty, hangs Redis
(SIGSTOP/SIGCONT), and kills the batch worker mid-batch. Prints a table and a verdict
and writes the numbers as JSON. Exit code 0 unless the harness itself failed.
See docs/soak.md.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 300] [--routed-share 0.3]
                                   [--out soak.json] [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.soak_faults import Faults, warm_worker  # noqa: E402 - after the path set-up
from bench.soak_load import Load  # noqa: E402
from bench.soak_procs import EXPERTS, Deployment  # noqa: E402
from bench.soak_report import summarise, table, verdict  # noqa: E402
from tests.support.net import free_port  # noqa: E402

MAX_REQUESTS = 500_000
GRACE_S = 30.0


async def warm_up(gateways: list[str]) -> None:
    """Every gateway answers each expert and a routed request once (the encoder loads)."""
    async with httpx.AsyncClient(timeout=120) as client:
        for url in gateways:
            for model in [*EXPERTS, "coe/auto"]:
                body = {"model": model, "messages": [{"role": "user", "content": "warm up"}]}
                r = await client.post(f"{url}/v1/chat/completions", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up {model} on {url}: {r.status_code} {r.text[:300]}")


async def soak(dep: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    started = time.monotonic()
    print("starting redis, 3 fake experts, 2 gateways, 1 worker ...", flush=True)
    await dep.start_all()
    await warm_up(dep.gateways)
    async with httpx.AsyncClient(base_url=dep.gateways[0], timeout=30) as http:
        await warm_worker(http)
    print(f"up in {time.monotonic() - started:.0f} s; load for {seconds:.0f} s", flush=True)
    load = Load(dep.gateways, args.rate, seconds, args.routed_share)
    faults = Faults(dep, seconds)
    t0 = time.monotonic() + 0.5
    fault_task = asyncio.create_task(faults.run(t0))
    try:
        await load.run(t0)
        print(f"schedule sent; waiting up to {GRACE_S:.0f} s for the last answers", flush=True)
        await load.drain(GRACE_S)
        await fault_task  # a fault still healing (e.g. an upstream restarting) finishes
        await faults.finish_batch()
        await faults.finish_batch(timeout_s=60, b=faults.after_restart)
    finally:
        fault_task.cancel()
        await faults.close()
    if args.records:
        write_records(args.records, load)
    report = summarise(load, dep, faults.windows, faults.batch)
    report["batch_after_redis_restart"] = faults.after_restart.summary()
    return report


def write_records(path: Path, load: Load) -> None:
    """One JSON line per request, times in seconds from the start of the load."""
    with path.open("w") as out:
        for r in load.records:
            row = {
                "id": r.rid,
                "model": r.model,
                "gateway": r.gateway,
                "scheduled": round(r.scheduled - load.t0, 4),
                "sent": round(r.sent - load.t0, 4) if r.sent else None,
                "done": round(r.done - load.t0, 4) if r.done else None,
                "status": r.status,
                "error": r.error,
                "expert": r.expert,
            }
            out.write(json.dumps(row) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration")
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s in total")
    parser.add_argument(
        "--routed-share", type=float, default=0.3, help="share of requests sent as coe/auto"
    )
    parser.add_argument("--out", type=Path, default=Path("soak.json"), help="JSON report path")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of every coe process (0: torch's default, a thread per core)",
    )
    parser.add_argument("--records", type=Path, help="also write one JSON line per request here")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here (default: temp)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    if not 0 <= args.routed_share <= 1:
        parser.error("--routed-share is a fraction between 0 and 1")
    if args.minutes * 60 * args.rate > MAX_REQUESTS:
        parser.error(f"bounded: at most {MAX_REQUESTS:,} requests (--minutes x 60 x --rate)")
    return args


def _stop_on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C


def main() -> int:
    args = parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets in flight
    signal.signal(signal.SIGTERM, _stop_on_term)
    with tempfile.TemporaryDirectory(prefix="coe-soak-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        names = ["redis", *(f"up:{e}" for e in EXPERTS), "gw0", "gw1"]
        dep = Deployment(logs, {n: free_port() for n in names}, args.torch_threads)
        try:
            report = asyncio.run(soak(dep, args))
        except KeyboardInterrupt:
            print("interrupted: stopping every process", file=sys.stderr)
            return 130
        except Exception:
            traceback.print_exc()
            for name in ["gw0", "gw1", "worker"]:
                print(f"--- {name}.log (tail)\n{dep.log_tail(name)}", file=sys.stderr)
            return 2
        finally:
            dep.close()
    report["config"]["cpus"] = os.cpu_count()
    report["config"]["torch_threads"] = args.torch_threads or "torch default"
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(table(report))
    print(f"\nJSON: {args.out}")
    print(verdict(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
