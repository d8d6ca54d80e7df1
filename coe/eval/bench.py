"""Embedding-routing speed: single-query latency (p50/p99) and batched throughput.

Measured through `EmbeddingRouter.route` / `route_batch` with the real encoder and no memo,
so every query is encoded; the index is MMLU-Pro plus the healthcare routes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from coe.eval.embcache import warm
from coe.eval.harness import build_router, context, offline_config
from coe.routing.data import load_labelled
from coe.routing.encoders import EncoderCache


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
