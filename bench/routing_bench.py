"""Embedding routing speed on this CPU: `python bench/routing_bench.py [DATA_DIR]` prints one
JSON line (DATA_DIR: the shared data sets, default ../shared/data).

Single-query latency (p50/p99) and batched throughput, measured through
`EmbeddingRouter.route` / `route_batch` with the real encoder and no memo, so every query is
encoded; the index is MMLU-Pro plus the healthcare routes.
Targets (docs/routing-eval.md): p50 <= 5 ms for one query, >= 500 queries/s batched.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coe.eval.embcache import warm  # noqa: E402 - after the path set-up, for a bare checkout
from coe.eval.harness import build_router, context, offline_config  # noqa: E402
from coe.routing.data import load_labelled  # noqa: E402
from coe.routing.encoders import EncoderCache  # noqa: E402


def run_bench(
    data_dir: Path, single: int = 200, batch_queries: int = 1024, batch_size: int = 128
) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    enc = EncoderCache(batch_size=batch_size)
    hc = load_labelled(data_dir / "healthcare_routes" / "evaluation.csv")
    mmlu = load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")
    examples = [e for e in [*hc, *mmlu] if e.label]
    labels = sorted({e.label for e in examples if e.label})
    experts = [f"e{i}" for i in range(len(labels))]
    config = offline_config(
        experts, experts[0], categories={lab: [e] for lab, e in zip(labels, experts, strict=True)}
    )
    router = build_router("embedding", {"mode": "knn", "k": 3}, config, enc)
    warm(enc, [e.text for e in examples])  # index vectors from the disk cache when present
    router.fit_labelled(examples)  # type: ignore[attr-defined]
    enc.clear_memo()  # from here on every query is really encoded
    ctx = context(config)
    queries = [e.text for e in hc]

    async def measure() -> tuple[list[float], float]:
        for q in queries[:20]:  # warm-up
            await router.route(q, ctx)
        lat = []
        for i in range(single):
            t = time.perf_counter()
            await router.route(queries[i % len(queries)], ctx)
            lat.append(time.perf_counter() - t)
        many = [f"{queries[i % len(queries)]} ({i})" for i in range(batch_queries)]
        t = time.perf_counter()
        for j in range(0, len(many), batch_size):
            await router.route_batch(many[j : j + batch_size], ctx)
        return lat, time.perf_counter() - t

    lat, batch_s = asyncio.run(measure())
    ms = np.array(lat) * 1000
    return {
        "index_examples": len(examples),
        "single_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "single_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "batched_qps": round(batch_queries / batch_s, 1),
        "batch_size": batch_size,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
    print(json.dumps(run_bench(data)))


if __name__ == "__main__":
    main()
