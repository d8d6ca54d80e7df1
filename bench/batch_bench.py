"""Batch throughput and upload isolation, side by side in one run.

1. Lines/s for one job (default 10,000 lines) through 1, 2 and 4 `coe worker` processes:
   each run a gateway (no in-process worker), the fast test upstream and Redis under a
   fresh prefix; the job goes the official way (POST /v1/files, POST /v1/batches, poll,
   read the output file).
2. Chat p99 through the gateway while a 50 MiB batch file uploads, against idle: the
   upload's parsing must not stall the event loop that serves chat.

    .venv/bin/python bench/batch_bench.py [--lines 10000] [--workers 1,2,4] [--upload-mib 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import delete_prefix, free_port, wait_healthy  # noqa: E402 - after the path set-up

REDIS_URL = os.environ.get("COE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@contextmanager
def deployment(tmp: Path, workers: int, chunk: int) -> Iterator[str]:
    """Fast upstream, one gateway and `workers` workers on a fresh Redis prefix."""
    up_port, gw_port = free_port(), free_port()
    prefix = f"coe-bench-batch:{uuid.uuid4().hex[:8]}:"
    cfg = tmp / f"experts-{workers}-{up_port}.yaml"
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
        "COE_BATCH_CHUNK": str(chunk),
        "COE_BATCH_MAX_BYTES": str(64 * 1024 * 1024),
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
        time.sleep(3 if workers else 0)  # workers import and connect before the clock starts
        yield f"http://127.0.0.1:{gw_port}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        delete_prefix(REDIS_URL, prefix)


def jsonl(lines: int, pad: int = 0) -> bytes:
    filler = "x" * pad
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": f"e{i % 3}",
                    "messages": [{"role": "user", "content": f"q {i} {filler}"}],
                    "max_tokens": 8,
                },
            }
        )
        for i in range(lines)
    ).encode()


def upload(http: httpx.Client, content: bytes) -> dict[str, Any]:
    r = http.post("/v1/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"})
    r.raise_for_status()
    return dict(r.json())


def throughput(tmp: Path, lines: int, workers: int) -> dict[str, Any]:
    content = jsonl(lines)
    with (
        deployment(tmp, workers, chunk=200) as url,
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        started = time.perf_counter()
        file = upload(http, content)
        job = http.post(
            "/v1/batches",
            json={
                "input_file_id": file["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ).json()
        while True:
            status = http.get(f"/v1/batches/{job['id']}").json()
            if status["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            time.sleep(0.1)
        wall = time.perf_counter() - started
        out = http.get(f"/v1/files/{status['output_file_id']}/content").text.splitlines()
    ids = [json.loads(line)["custom_id"] for line in out]
    return {
        "workers": workers,
        "wall_s": wall,
        "lines_per_s": lines / wall,
        "ok": len(ids),
        "unique": len(set(ids)),
        "failed": status["request_counts"]["failed"],
    }


def chat_latencies(url: str, n: int) -> list[float]:
    body = {"model": "e0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(n):
            started = time.perf_counter()
            http.post("/v1/chat/completions", json=body).raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def upload_rounds(url: str, path: str, rounds: int) -> None:
    """Sender process: upload the file and create a batch from it (where it is parsed),
    `rounds` times; prints the seconds each took. A process of its own, so its work
    does not slow the client that times chat."""
    content = Path(path).read_bytes()
    with httpx.Client(base_url=url, timeout=300) as http:
        for _ in range(rounds):
            started = time.perf_counter()
            file = upload(http, content)
            http.post(
                "/v1/batches",
                json={
                    "input_file_id": file["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            ).raise_for_status()
            print(time.perf_counter() - started, flush=True)


def upload_isolation(tmp: Path, mib: int, samples: int, rounds: int = 3) -> dict[str, Any]:
    pad = 1000
    lines = min(50_000, mib * 1024 * 1024 // (pad + 180))
    content = jsonl(lines, pad)
    path = tmp / "upload.jsonl"
    path.write_bytes(content)
    with deployment(tmp, 0, chunk=200) as url:
        chat_latencies(url, 50)  # warm up
        idle = chat_latencies(url, samples)
        sender = subprocess.Popen(
            [sys.executable, __file__, "--upload-rounds", url, str(path), str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        during: list[float] = []
        while sender.poll() is None:
            during += chat_latencies(url, 10)
        took = [float(line) for line in (sender.stdout.read() if sender.stdout else "").split()]
        assert sender.returncode == 0 and len(took) == rounds, "the uploads failed"
    return {
        "mib": len(content) / 2**20,
        "lines": lines,
        "upload_s": statistics.median(took),
        "rounds": rounds,
        "idle": idle,
        "during": during,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--upload-mib", type=int, default=50)
    parser.add_argument("--samples", type=int, default=300, help="idle chat requests timed")
    parser.add_argument("--upload-rounds", nargs=3, help=argparse.SUPPRESS)  # sender process
    args = parser.parse_args()
    if args.upload_rounds:
        url, path, rounds = args.upload_rounds
        upload_rounds(url, path, int(rounds))
        return
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [throughput(Path(tmp), args.lines, n) for n in counts]
        up = upload_isolation(Path(tmp), args.upload_mib, args.samples)
    print(f"batch throughput: {args.lines} lines, fast test upstream, Redis, {os.cpu_count()} CPUs")
    print(f"{'workers':<9}{'wall s':>9}{'lines/s':>10}{'ok':>8}{'unique':>8}{'failed':>8}")
    for r in rows:
        print(
            f"{r['workers']:<9}{r['wall_s']:>9.2f}{r['lines_per_s']:>10.0f}{r['ok']:>8}"
            f"{r['unique']:>8}{r['failed']:>8}"
        )
    for r in rows[1:]:
        ratio = r["lines_per_s"] / rows[0]["lines_per_s"]
        print(f"{r['workers']} workers / {rows[0]['workers']} worker: {ratio:.2f}x")
    idle, during = up["idle"], up["during"]
    print(
        f"\nchat while a {up['mib']:.1f} MiB batch file ({up['lines']} lines) is uploaded and "
        f"a batch created from it, {up['rounds']} times ({up['upload_s']:.1f} s each, median):"
    )
    print(f"{'':<8}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, values in (("idle", idle), ("upload", during)):
        print(
            f"{name:<8}{len(values):>6}{p(values, 50):>9.1f}{p(values, 99):>9.1f}"
            f"{max(values):>9.1f}"
        )
    print(f"p99 during upload / idle: {p(during, 99) / p(idle, 99):.2f}x")


if __name__ == "__main__":
    main()
