"""Routing speed, quality and gateway throughput per routing encoder, side by side.

How to run (from the project root; the shared data sets beside it):

    .venv/bin/python bench/routing_bench.py [--data-dir ../shared/data]
        [--encoders minilm,minilm-int8,minilm-static] [--json-out FILE] [--quick]

It prints two tables and writes the same numbers as JSON (to FILE, else as the last line of
the output). The MiniLM passes take most of the time: on 2 cores that other jobs kept busy,
the full run took 12 minutes (load average 3-6) and `--quick` (1,000 batched queries instead
of 5,000) 8 minutes (load average 5-7); idle cores are faster. `--no-gateway` leaves out the
gateway half. Per encoder:

- router: the shipped experts.yaml's `topic` router built with that encoder; one decision's
  latency p50/p99 for short real queries (healthcare utterances, MMLU-Pro question stems) and
  ~1,000-character ones (LLMRouter queries of 900-1,400 characters), every query encoded (no
  query cache); a query-cache hit's p50; `route_batch` decisions/s in chunks of 256 over
  ~5,000 real queries (MMLU-Pro, healthcare, LLMRouter).
- quality: 5-fold accuracy on the 14 MMLU-Pro categories (embedding kNN and logistic
  regression on the encoder's vectors) and the healthcare test accuracy (abstention
  calibrated on its validation split), with the change against minilm in points. The full
  quality report is tools/routing_report.py.
- gateway: a real `coe serve` (embedded store, COE_ENCODER_CACHE_SIZE=0) on a copy of the
  shipped experts.yaml with `encoder:` set, every expert at one fast test upstream: its RSS
  after warm-up, whether libtorch is mapped, POST /v1/route p50 (short, long) and chat
  requests/s and p50 at concurrency 1 and 16, `coe/auto` against naming `generalist`, each
  request a different text so no cache helps.

The load average and CPU count are printed with the results: on a shared machine the
latencies move with whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.routing_bench_gateway import (  # noqa: E402 - after the path set-up, for a bare checkout
    GatewayPlan,
    Upstream,
    bench_gateway,
    clean_env,
)
from coe.errors import CoeError  # noqa: E402
from coe.eval import categories  # noqa: E402
from coe.eval.embcache import warm  # noqa: E402
from coe.eval.harness import build_router, context  # noqa: E402
from coe.eval.kfold import run_kfold  # noqa: E402
from coe.experts.schema import load_config  # noqa: E402
from coe.routing.base import RouteContext, Router  # noqa: E402
from coe.routing.data import load_labelled, load_outcomes  # noqa: E402
from coe.routing.encoders import EncoderCache  # noqa: E402

ENCODERS = "minilm,minilm-int8,minilm-static"
ROUTER = "topic"  # the shipped embedding router of coe/auto
LONG_CHARS = (900, 1400)
MIN_LONG = 50  # fewer long LLMRouter queries (a data slice): add joined MMLU-Pro ones
CHUNK = 256  # route_batch chunk


@dataclass(frozen=True)
class Sizes:
    single_short: int = 300
    single_long: int = 100
    cache_hits: int = 200
    batch_queries: int = 5000
    folds: int = 5
    gateway: GatewayPlan = field(default_factory=GatewayPlan)


FULL = Sizes()
QUICK = Sizes(100, 40, 100, 1000, 5, GatewayPlan(route_requests=30, chat_requests=120))


@dataclass(frozen=True)
class Queries:
    short: list[str]  # healthcare utterances and MMLU-Pro question stems
    long: list[str]  # ~1,000 characters
    batch: list[str]  # MMLU-Pro, healthcare and LLMRouter, in a fixed shuffled order


def load_queries(data_dir: Path, batch: int, seed: int = 0) -> Queries:
    health = [e.text for e in load_labelled(data_dir / "healthcare_routes" / "evaluation.csv")]
    mmlu = [e.text for e in load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")]
    llm = [r.text for r in load_outcomes(data_dir / "llmrouter" / "train.jsonl")]
    rng = random.Random(seed)
    short = health + [t.split(" The options are:")[0] for t in mmlu]
    rng.shuffle(short)
    long = [t for t in llm if LONG_CHARS[0] <= len(t) <= LONG_CHARS[1]]
    joined = ""
    for text in mmlu if len(long) < MIN_LONG else []:  # a small slice: MMLU-Pro joined
        joined = f"{joined} {text}".strip()
        if len(joined) >= LONG_CHARS[0]:
            long.append(joined[: LONG_CHARS[1]])
            joined = ""
    every = list(dict.fromkeys(mmlu + health + llm))
    rng.shuffle(every)
    return Queries(short, long, every[:batch])


def topic_router(spec: str, query_cache_size: int) -> tuple[Router, RouteContext, EncoderCache]:
    """The shipped `topic` router served by encoder `spec` (not yet set up)."""
    config = load_config(REPO / "experts.yaml").model_copy(update={"encoder": spec})
    raw = config.routers[ROUTER]
    enc = EncoderCache(spec, query_cache_size=query_cache_size)
    router = build_router(raw.type, dict(raw.params), config, enc, base_dir=REPO, name=ROUTER)
    return router, context(config), enc


def _cycle(texts: Sequence[str], n: int) -> list[str]:
    return [texts[i % len(texts)] for i in range(n)]


async def _latencies(router: Router, ctx: RouteContext, queries: Sequence[str]) -> np.ndarray:
    out = []
    for q in queries:
        t = time.perf_counter()
        await router.route(q, ctx)
        out.append(time.perf_counter() - t)
    return np.array(out) * 1000


def _pcts(ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


async def router_speed(spec: str, q: Queries, sizes: Sizes) -> tuple[dict[str, Any], EncoderCache]:
    """Decision latency and batched throughput of the topic router, every query encoded."""
    router, ctx, enc = topic_router(spec, query_cache_size=0)
    t = time.perf_counter()
    await router.setup()
    load_s = time.perf_counter() - t
    await _latencies(router, ctx, q.short[:10] + q.long[:3])  # warm-up
    short = _pcts(await _latencies(router, ctx, _cycle(q.short, sizes.single_short)))
    long = _pcts(await _latencies(router, ctx, _cycle(q.long, sizes.single_long)))
    t = time.perf_counter()
    for i in range(0, len(q.batch), CHUNK):
        await router.route_batch(q.batch[i : i + CHUNK], ctx)
    batch_s = time.perf_counter() - t

    encoded = enc.calls  # model calls: one per decision or chunk, the proof no cache helped

    cached, cctx, cenc = topic_router(spec, query_cache_size=10_000)
    await cached.setup()
    hits = q.short[: sizes.cache_hits]
    await _latencies(cached, cctx, hits)  # misses: now every one is remembered
    before = cenc.cache_hits
    hit = _pcts(await _latencies(cached, cctx, hits))
    return {
        "setup_s": round(load_s, 2),
        "short": short,
        "long": long,
        "long_mean_chars": round(float(np.mean([len(x) for x in q.long])), 0),
        "cache_hit_p50_ms": hit["p50_ms"],
        "cache_hits": cenc.cache_hits - before,
        "encoder_calls": encoded,
        "batch_decisions_per_s": round(len(q.batch) / batch_s, 1),
        "batch_queries": len(q.batch),
    }, enc


def quality(enc: EncoderCache, data_dir: Path, folds: int) -> dict[str, Any]:
    """MMLU-Pro k-fold accuracy (kNN, logistic regression) and healthcare test accuracy."""
    cache = enc.bound(enc.default)  # the same loaded model, its own memo of vectors
    mmlu = data_dir / "mmlu_pro" / "validation.jsonl"
    knn = run_kfold("labelled", mmlu, "embedding-knn", cache, folds)
    logreg = run_kfold("labelled", mmlu, "category", cache, folds)
    path = data_dir / "healthcare_routes" / "evaluation.csv"
    tr, va, te = (load_labelled(path, s) for s in ("train", "validation", "test"))
    warm(cache, [e.text for e in [*tr, *va, *te]])
    health = categories.evaluate("category-abstain", tr, te, cache, va)
    return {
        "mmlu_pro_knn_acc": knn["accuracy"],
        "mmlu_pro_logreg_acc": logreg["accuracy"],
        "mmlu_pro_n": knn["n"],
        "healthcare_test_acc": health["accuracy"],
        "healthcare_test_n": health["n"],
    }


QUALITY_KEYS = ("mmlu_pro_knn_acc", "mmlu_pro_logreg_acc", "healthcare_test_acc")


def add_deltas(results: dict[str, dict[str, Any]], base: str = "minilm") -> None:
    """Each encoder's quality change against `base`, in percentage points."""
    ref = results.get(base, {}).get("quality")
    for r in results.values():
        if ref and "quality" in r:
            r["quality"]["delta_pts_vs_minilm"] = {
                k: round((r["quality"][k] - ref[k]) * 100, 1) for k in QUALITY_KEYS
            }


async def gateways(
    specs: Sequence[str], q: Queries, plan: GatewayPlan, results: dict[str, dict[str, Any]]
) -> None:
    upstream = Upstream(clean_env())
    try:
        await upstream.ready()
        for spec in specs:
            log(f"{spec}: gateway")
            try:
                results[spec]["gateway"] = await bench_gateway(
                    spec, upstream, q.short, q.long, plan
                )
            except RuntimeError as err:
                results[spec]["gateway"] = {"error": str(err)}
    finally:
        upstream.stop()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_bench(
    data_dir: Path, specs: Sequence[str], sizes: Sizes, with_gateway: bool = True
) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started, load_before = time.monotonic(), os.getloadavg()[0]
    q = load_queries(data_dir, sizes.batch_queries)
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        log(f"{spec}: router speed")
        try:
            speed, enc = asyncio.run(router_speed(spec, q, sizes))
        except (CoeError, ImportError, OSError) as err:  # an encoder this machine lacks
            results[spec] = {"error": str(err)}
            continue
        log(f"{spec}: quality")
        results[spec] = {"router": speed, "quality": quality(enc, data_dir, sizes.folds)}
    add_deltas(results)
    usable = [s for s in specs if "error" not in results[s]]
    if with_gateway and usable:
        asyncio.run(gateways(usable, q, sizes.gateway, results))
    return {
        "encoders": results,
        "queries": {"short": len(q.short), "long": len(q.long), "batch": len(q.batch)},
        "sizes": {k: v for k, v in vars(sizes).items() if k != "gateway"} | vars(sizes.gateway),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "load_avg_1m_at_start": round(load_before, 2),
        "elapsed_s": round(time.monotonic() - started, 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _row(cells: Sequence[Any], widths: Sequence[int]) -> str:
    return "".join(
        f"{c!s:<{w}}" if i == 0 else f"{c!s:>{w}}"
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def tables(report: dict[str, Any]) -> str:
    enc = report["encoders"]
    head = [
        "encoder",
        "short p50/p99",
        "long p50/p99",
        "hit p50",
        "batch/s",
        "kNN acc",
        "logreg",
        "health",
        "Δ pts kNN/LR/H",
    ]
    widths = [15, 15, 16, 9, 9, 9, 8, 8, 18]
    lines = ["router (ms; no query cache) and quality", _row(head, widths)]
    for name, r in enc.items():
        if "error" in r:
            lines.append(f"{name:<15}skipped: {r['error']}")
            continue
        s, qual = r["router"], r["quality"]
        d = qual.get("delta_pts_vs_minilm")
        lines.append(
            _row(
                [
                    name,
                    f"{s['short']['p50_ms']}/{s['short']['p99_ms']}",
                    f"{s['long']['p50_ms']}/{s['long']['p99_ms']}",
                    s["cache_hit_p50_ms"],
                    s["batch_decisions_per_s"],
                    qual["mmlu_pro_knn_acc"],
                    qual["mmlu_pro_logreg_acc"],
                    qual["healthcare_test_acc"],
                    "/".join(f"{d[k]:+.1f}" for k in QUALITY_KEYS) if d else "-",
                ],
                widths,
            )
        )
    head = [
        "encoder",
        "start s",
        "RSS MiB",
        "torch",
        "route s/l p50",
        "c1 auto/named req/s",
        "c1 p50 ms",
        "c16 auto/named req/s",
        "c16 p50 ms",
        "ratio c1/c16",
    ]
    widths = [15, 8, 9, 7, 15, 21, 16, 22, 17, 14]
    served = {name: r["gateway"] for name, r in enc.items() if "gateway" in r}
    if served:
        lines += [
            "",
            "gateway (coe serve, fast upstream, routed coe/auto vs named generalist)",
            _row(head, widths),
        ]
    for name, g in served.items():
        if "error" in g:
            lines.append(f"{name:<15}failed: {g['error'][:300]}")
            continue
        c1, c16 = g["chat_c1"], g["chat_c16"]
        lines.append(
            _row(
                [
                    name,
                    g["start_s"],
                    g["rss_mib"],
                    "yes" if g["torch_loaded"] else "no",
                    f"{g['route_short_p50_ms']}/{g['route_long_p50_ms']}",
                    f"{c1['routed']['rps']}/{c1['named']['rps']}",
                    f"{c1['routed']['p50_ms']}/{c1['named']['p50_ms']}",
                    f"{c16['routed']['rps']}/{c16['named']['rps']}",
                    f"{c16['routed']['p50_ms']}/{c16['named']['p50_ms']}",
                    f"{c1['ratio_rps']}/{c16['ratio_rps']}",
                ],
                widths,
            )
        )
    qn = report["queries"]
    lines += [
        "",
        f"queries: {qn['short']} short, {qn['long']} long, {qn['batch']} batched; "
        f"cpu_count {report['cpu_count']}, load_avg_1m {report['load_avg_1m']} (at start "
        f"{report['load_avg_1m_at_start']}), {report['elapsed_s']} s, "
        f"OMP_NUM_THREADS {report['omp_num_threads']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--encoders", default=ENCODERS, help="comma-separated encoder specs")
    parser.add_argument("--json-out", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="smaller samples, ~3 minutes")
    parser.add_argument("--no-gateway", action="store_true", help="router and quality only")
    args = parser.parse_args(argv)
    specs = [s.strip() for s in args.encoders.split(",") if s.strip()]
    report = run_bench(args.data_dir, specs, QUICK if args.quick else FULL, not args.no_gateway)
    print(tables(report))
    text = json.dumps(report, sort_keys=True)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
        print(f"JSON: {args.json_out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
