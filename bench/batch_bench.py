"""Batch throughput: a 1,000-line file through the fast test upstream, 1 worker vs 2.

Each run uses a gateway (no in-process worker), N `coe worker` processes and Redis
under a fresh prefix; prints lines/s for each, side by side, and the ratio.

    .venv/bin/python bench/batch_bench.py [--lines 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import delete_prefix, free_port, wait_healthy  # noqa: E402 - after the path set-up

REDIS_URL = os.environ.get("COE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def run_once(lines: int, workers: int, tmp: Path) -> dict[str, float]:
    up_port, gw_port = free_port(), free_port()
    prefix = f"coe-bench-batch:{uuid.uuid4().hex[:8]}:"
    cfg = tmp / f"experts-{workers}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {
                        "name": f"e{i}",
                        "model": "m",
                        "endpoints": [f"http://127.0.0.1:{up_port}"],
                        "limits": {"max_concurrency": 64},
                    }
                    for i in range(3)
                ],
                "default_expert": "e0",
                "pipelines": {"auto": {"routers": ["default"]}},
                "routers_dirs": [str(REPO / "routers")],
            }
        )
    )
    env = {
        **os.environ,
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_DEV_MODE": "1",
        "COE_BATCH_WORKER": "false",
        "COE_LOG_LEVEL": "WARNING",
        "COE_EXPERTS_FILE": str(cfg),
        "COE_BATCH_CHUNK": "50",
    }
    procs = [
        subprocess.Popen([sys.executable, "-m", "coe.testing", "--port", str(up_port)], env=env),
        subprocess.Popen(
            [sys.executable, "-m", "coe.cli", "serve", "--port", str(gw_port)], env=env
        ),
    ]
    try:
        wait_healthy(f"http://127.0.0.1:{up_port}")
        wait_healthy(f"http://127.0.0.1:{gw_port}")
        procs += [
            subprocess.Popen(
                [sys.executable, "-m", "coe.cli", "worker", "--name", f"w{i}"], env=env
            )
            for i in range(workers)
        ]
        time.sleep(3)  # workers import and connect before the clock starts
        content = "\n".join(
            json.dumps(
                {
                    "custom_id": f"q{i}",
                    "body": {
                        "model": f"e{i % 3}",
                        "messages": [{"role": "user", "content": f"q {i}"}],
                        "max_tokens": 8,
                    },
                }
            )
            for i in range(lines)
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{gw_port}", timeout=60) as http:
            started = time.perf_counter()
            job = http.post("/v1/batches", files={"file": ("b.jsonl", content)}).json()
            while True:
                status = http.get(f"/v1/batches/{job['id']}").json()
                if status["status"] == "completed":
                    break
                time.sleep(0.05)
            wall = time.perf_counter() - started
            results = http.get(f"/v1/batches/{job['id']}/results").text.splitlines()
        ok = sum(1 for r in results if json.loads(r)["error"] is None)
        return {
            "workers": workers,
            "lines": lines,
            "wall_s": wall,
            "lines_per_s": lines / wall,
            "ok": ok,
            "results": len(results),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
        delete_prefix(REDIS_URL, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_once(args.lines, n, Path(tmp)) for n in (1, 2)]
    print(f"batch throughput: {args.lines} lines, fast test upstream, Redis, {os.cpu_count()} CPUs")
    print(f"{'workers':<9}{'wall s':>9}{'lines/s':>10}{'ok':>7}{'results':>9}")
    for r in rows:
        print(
            f"{r['workers']:<9}{r['wall_s']:>9.2f}{r['lines_per_s']:>10.0f}{r['ok']:>7}"
            f"{r['results']:>9}"
        )
    print(f"2 workers / 1 worker: {rows[1]['lines_per_s'] / rows[0]['lines_per_s']:.2f}x")


if __name__ == "__main__":
    main()
