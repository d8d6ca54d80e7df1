"""The Ray batch engine against the Redis engine, side by side in one run.

One batch file (default 10,000 lines of real questions, every tenth on a k = 2 pipeline
aggregated by `synthesize`), one routing config (an embedding kNN router on the int8
MiniLM, threshold 0) and three experts that all point at one fault-injecting
OpenAI-compatible upstream (its own process), run through:

  a. the Redis engine with 1 `coe worker` process,
  b. the Redis engine with 2 `coe worker` processes (real Redis, a fresh key prefix each,
     deleted after; the job is created here with `BatchJobs` over a `RedisStore`),
  c. the Ray engine on a local Ray (`ray.init(num_cpus=2)`).

Each is timed from job creation to the last output line written. Workers are started and
warmed up (a small job, untimed) before their clock starts, as long-lived workers are; a
Ray job starts its actors (and loads the encoder in each routing actor) inside its time,
as every Ray job does. Every run must answer every line, and the Ray run's expert for each
custom_id is compared with the Redis runs'.

    .venv/bin/python bench/ray_batch_bench.py [--lines 10000] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import delete_prefix, free_port, wait_healthy  # noqa: E402 - after the path set-up

REDIS_URL = os.environ.get("COE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DATA = REPO / "tests" / "data"
EXPERTS = ("generalist", "math-tutor", "coder")
FINISHED = ("completed", "expired", "cancelled", "failed")
DUO_EVERY = 10  # every tenth line goes to the k = 2 pipeline
OPENERS = ("", "Quick question: ", "Please answer briefly. ", "I was wondering: ")


# -- the workload -------------------------------------------------------------------------
def questions(data: Path = DATA) -> list[str]:
    """The shipped sample requests and MMLU-Pro validation questions (cut to 300 chars)."""
    with (data / "shipped_requests.jsonl").open() as fh:
        shipped = [json.loads(x)["text"] for x in fh]
    with (data / "mmlu_pro" / "validation.jsonl").open() as fh:
        pro = [json.loads(x)["question"][:300] for x in fh]
    return shipped + pro


def batch_lines(n: int, data: Path = DATA, tag: str = "q") -> list[str]:
    """`n` batch lines: the questions in turn, each pass with another opener and every line
    numbered, so no two lines are the same text (no encoder cache hit between them)."""
    qs = questions(data)
    lines = []
    for i in range(n):
        opener = OPENERS[(i // len(qs)) % len(OPENERS)]
        text = f"{opener}{qs[i % len(qs)]} (#{i})"
        model = "coe/duo" if i % DUO_EVERY == 0 else "coe/auto"
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        lines.append(
            json.dumps(
                {
                    "custom_id": f"{tag}{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    return lines


def config(upstream: str) -> dict[str, Any]:
    """Three experts on one upstream; the shipped topic router (kNN over example requests)
    with threshold 0, so every line is routed by it and the k = 2 lines all fan out."""
    shipped = yaml.safe_load((REPO / "experts.yaml").read_text())
    topic = shipped["routers"]["topic"]
    topic["params"]["threshold"] = 0.0
    return {
        "encoder": "minilm-int8",
        "experts": [
            {
                "name": n,
                "model": n,
                "endpoints": [upstream],
                "limits": {"timeout_s": 30, "max_concurrency": 64},
            }
            for n in EXPERTS
        ],
        "default_expert": "generalist",
        "routers": {"topic": topic},
        "pipelines": {
            "auto": {"routers": ["topic", "default"]},
            "duo": {
                "routers": ["topic"],
                "k": 2,
                "aggregation": {"strategy": "synthesize", "aggregator": "generalist"},
            },
        },
        "routers_dirs": [str(REPO / "routers")],
    }


@contextmanager
def upstream_process(env: dict[str, str]) -> Iterator[str]:
    """The fault-injecting upstream (`python -m coe.testing`) in its own process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coe.testing", "--port", str(port), "--name", "bench"], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- runs ---------------------------------------------------------------------------------
@dataclass
class Run:
    engine: str
    workers: str  # worker processes, or Ray's routing x answering actors (max)
    seconds: float
    lines: int
    completed: int
    failed: int
    output: str
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0


def _env(cfg: Path, prefix: str, chunk: int) -> dict[str, str]:
    return {
        **os.environ,
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_EXPERTS_FILE": str(cfg),
        "COE_BATCH_CHUNK": str(chunk),
        "COE_BATCH_CLAIM_IDLE_S": "30",
        "COE_BATCH_WORKER": "false",
        "COE_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


async def _redis_job(
    prefix: str, chunk: int, lines: list[str], output: Path, timeout_s: float
) -> dict[str, Any]:
    """Create a job over `lines` with `BatchJobs` on a `RedisStore`, wait for the workers to
    finish it and write its result lines to `output`; the final job object."""
    from coe.batch import BatchJobs
    from coe.store.redis_store import RedisStore

    store = RedisStore.from_url(REDIS_URL, prefix=prefix)
    jobs = BatchJobs(store, chunk=chunk)
    try:
        text = "\n".join(lines) + "\n"
        uploaded = await jobs.files.create(text, len(text.encode()), output.name)
        job = await jobs.create(uploaded["id"])
        deadline = time.monotonic() + timeout_s
        while job["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise RuntimeError(f"batch {job['id']} unfinished after {timeout_s:.0f} s: {job}")
            await asyncio.sleep(0.1)
            job = await jobs.retrieve(job["id"])
        with output.open("w", encoding="utf-8") as out:
            async for line in jobs.results(job["id"]):
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
        return job
    finally:
        await store.close()


def redis_run(
    cfg: Path, lines: list[str], workers: int, chunk: int, warmup: list[str], tmp: Path
) -> Run:
    """`workers` `coe worker` processes on a fresh prefix: warmed up on a small job, then
    timed on `lines`."""
    prefix = f"coe-bench-ray-vs-redis:{uuid.uuid4().hex[:10]}:"
    env = _env(cfg, prefix, chunk)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "coe.cli", "worker", "--name", f"w{i}"],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    output = tmp / f"redis-{workers}.jsonl"
    try:
        if warmup:
            asyncio.run(_redis_job(prefix, chunk, warmup, tmp / "warmup.jsonl", 300))
        started = time.perf_counter()
        job = asyncio.run(_redis_job(prefix, chunk, lines, output, 3600))
        seconds = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        delete_prefix(REDIS_URL, prefix)
    counts = job["request_counts"]
    return Run(
        "redis", str(workers), seconds, len(lines), counts["completed"], counts["failed"],
        str(output),
    )  # fmt: skip


def ray_run(cfg: Path, lines: list[str], warmup: list[str], tmp: Path) -> Run:
    """The Ray engine on the Ray this process is connected to (started by `run_bench`)."""
    import ray.data

    from coe.config import Settings
    from coe.experts.schema import load_config
    from coe.ray_batch import RayOptions, run_on_ray

    settings = Settings(redis_url=None, experts_file=cfg)
    coe_config = load_config(cfg)
    options = RayOptions(route_actors=2, answer_actors=2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-operator progress lines
    if warmup:
        source = tmp / "ray-warmup-in.jsonl"
        source.write_text("\n".join(warmup) + "\n")
        run_on_ray(str(source), str(tmp / "ray-warmup.jsonl"), settings, coe_config, options)
    source = tmp / "in.jsonl"
    output = tmp / "ray.jsonl"
    started = time.perf_counter()
    summary = run_on_ray(str(source), str(output), settings, coe_config, options)
    seconds = time.perf_counter() - started
    workers = f"{options.route_actors}x{options.answer_actors}"
    return Run(
        "ray", workers, seconds, len(lines), summary.completed, summary.failed, str(output),
        {k: round(v, 2) for k, v in summary.seconds.items()},
    )  # fmt: skip


# -- checks -------------------------------------------------------------------------------
def experts_by_id(path: str) -> dict[str, Any]:
    """custom_id -> who answered the line (expert and every expert asked), or its error."""
    out: dict[str, Any] = {}
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            line = json.loads(raw)
            if line["error"] is not None:
                out[line["custom_id"]] = ("error", line["error"]["code"])
            else:
                coe = line["response"]["body"]["coe"]
                out[line["custom_id"]] = (coe["expert"], tuple(coe["experts"]))
    return out


def compare(runs: list[Run], ids: list[str]) -> dict[str, Any]:
    """Every line answered once per run, and the Ray run's experts against each Redis run's."""
    seen = {f"{r.engine}-{r.workers}": experts_by_id(r.output) for r in runs}
    answered = {name: sorted(got) == sorted(ids) for name, got in seen.items()}
    ray = next(seen[n] for n in seen if n.startswith("ray"))
    differ = {
        name: sum(1 for cid in ids if got.get(cid) != ray.get(cid))
        for name, got in seen.items()
        if name.startswith("redis")
    }
    redis_runs = [got for name, got in seen.items() if name.startswith("redis")]
    between_redis = (
        sum(1 for cid in ids if redis_runs[0].get(cid) != redis_runs[1].get(cid))
        if len(redis_runs) == 2
        else 0
    )
    first = redis_runs[0] if redis_runs else ray
    share = Counter(str(v[0]) for v in first.values())
    fanned = sum(1 for v in first.values() if len(v[1]) > 1)
    return {
        "every_line_once": answered,
        "ray_expert_differs_from": differ,
        "redis_1_vs_2_differ": between_redis,
        "lines_per_expert": dict(share.most_common()),
        "k2_lines": fanned,
    }


def table(runs: list[Run], checks: dict[str, Any], lines: int) -> str:
    base = runs[0].lines_per_s
    load = os.getloadavg()[0]
    out = [
        f"Ray vs Redis batch engines: {lines} lines (every {DUO_EVERY}th k = 2 + synthesize), "
        f"minilm-int8 kNN routing, 3 experts on one fake upstream, {os.cpu_count()} CPUs, "
        f"load_avg_1m {load:.2f}",
        f"{'engine':<8}{'workers/actors':>16}{'seconds':>10}{'lines/s':>10}{'vs redis-1':>12}"
        f"{'completed':>11}{'failed':>8}",
    ]
    for r in runs:
        out.append(
            f"{r.engine:<8}{r.workers:>16}{r.seconds:>10.1f}{r.lines_per_s:>10.1f}"
            f"{r.lines_per_s / base:>11.2f}x{r.completed:>11}{r.failed:>8}"
        )
    ray = runs[-1]
    out.append(f"ray phases (s): {json.dumps(ray.phases)}")
    out.append(f"every line answered once: {json.dumps(checks['every_line_once'])}")
    out.append(
        "lines whose expert differs from the ray run: "
        + ", ".join(f"{k} {v}" for k, v in checks["ray_expert_differs_from"].items())
        + f"; redis-1 vs redis-2: {checks['redis_1_vs_2_differ']}"
    )
    out.append(
        f"lines per answering expert: {json.dumps(checks['lines_per_expert'])}; "
        f"k = 2 lines: {checks['k2_lines']}"
    )
    return "\n".join(out)


def run_bench(lines: int, chunk: int, warmup: int, tmp: Path) -> dict[str, Any]:
    import ray

    work = batch_lines(lines)
    warm = batch_lines(warmup, tag="warm")
    (tmp / "in.jsonl").write_text("\n".join(work) + "\n")
    with upstream_process(dict(os.environ)) as url:
        cfg = tmp / "experts.yaml"
        cfg.write_text(yaml.safe_dump(config(url)))
        runs = [redis_run(cfg, work, n, chunk, warm, tmp) for n in (1, 2)]
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            runs.append(ray_run(cfg, work, warm, tmp))
        finally:
            if started_here:
                ray.shutdown()
    ids = [json.loads(x)["custom_id"] for x in work]
    checks = compare(runs, ids)
    base = runs[0].lines_per_s
    return {
        "lines": lines,
        "chunk": chunk,
        "warmup_lines": warmup,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "runs": [
            {
                **{k: v for k, v in asdict(r).items() if k != "output"},
                "seconds": round(r.seconds, 2),
                "lines_per_s": round(r.lines_per_s, 1),
                "vs_redis_1": round(r.lines_per_s / base, 3),
            }
            for r in runs
        ],
        "checks": checks,
        "table": table(runs, checks, lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=64, help="COE_BATCH_CHUNK (route unit)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed lines before each run")
    parser.add_argument("--json-out", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="coe-ray-bench-") as tmp:
        report = run_bench(args.lines, args.chunk, args.warmup, Path(tmp))
    print(report["table"], flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(report["checks"]["every_line_once"].values()) and all(
        r["completed"] + r["failed"] == args.lines for r in report["runs"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
