"""Nearest-neighbour index on this CPU: exact numpy vs the approximate IVF, side by side.

    OMP_NUM_THREADS=1 python bench/index_bench.py [DATA_DIR] [--sizes 10000,50000,200000]

Vectors are real all-MiniLM-L6-v2 embeddings of the LLMRouter queries (DATA_DIR: the
shared data sets, default ../shared/data; encoded once, then read from the embedding disk
cache); a fixed-seed 500 of them are held out as queries, the rest are the examples, grown
to each size by noisy copies (cosine ~0.85 to their original, re-normalised) that keep
their task label and outcome scores. Per size and index: build time, one-query search
latency (p50/p99), batched queries/s, memory, recall@10 and recall@M against exact search,
and, through the real EmbeddingRouter, how often kNN (k=5, M=70 neighbours) and outcome
mode (k=20) decisions agree with the exact index's. faiss-cpu (same IVF settings) and
hnswlib (up to 50k examples) rows are added when those libraries import. Prints one JSON
line per (size, index), then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coe.eval.embcache import warm  # noqa: E402 - after the path set-up, for a bare checkout
from coe.eval.harness import build_router, context, offline_config  # noqa: E402
from coe.routing.data import LabelledExample, OutcomeExample  # noqa: E402
from coe.routing.encoders import EncoderCache  # noqa: E402
from coe.routing.index import ExactIndex, IVFIndex  # noqa: E402

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
K_KNN, K_OUTCOME, M = 5, 20, 70  # M = max(k·labels, 64) for 14 task labels
HNSW_UP_TO = 50_000


def load_queries(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "llmrouter" / "train.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def grow(base: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`size` unit vectors: the originals, then noisy copies; and each one's original row."""
    src = np.concatenate([np.arange(len(base)), rng.integers(0, len(base), size - len(base))])
    src = src[:size]
    noise = rng.standard_normal((size, base.shape[1])).astype(np.float32)
    noise *= 0.62 / np.sqrt(base.shape[1])  # |noise| ≈ 0.62: cosine ≈ 1/√(1+0.62²) ≈ 0.85
    noise[: len(base)] = 0.0
    x = base[src] + noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), src


def _faiss(x: np.ndarray) -> tuple[Search, int] | None:
    try:
        import faiss
    except ImportError:
        return None
    n_lists = round(np.sqrt(len(x)))
    quant = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quant, x.shape[1], n_lists, faiss.METRIC_INNER_PRODUCT)
    index.train(x[np.random.default_rng(0).permutation(len(x))[: 32 * n_lists]])
    index.add(x)
    index.nprobe = max(16, -(-n_lists // 5))  # the same settings as IVFIndex's defaults

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, i = index.search(np.ascontiguousarray(q), k)
        return d, i.astype(np.int64)

    return search, x.nbytes + n_lists * x.shape[1] * 4 + len(x) * 8


def _hnsw(x: np.ndarray) -> tuple[Search, int] | None:
    try:
        import hnswlib
    except ImportError:
        return None
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    if len(x) > HNSW_UP_TO:
        return None  # its build alone (minutes, single-threaded) rules it out for reloads
    index.init_index(max_elements=len(x), ef_construction=100, M=16)
    index.add_items(x, np.arange(len(x)), num_threads=1)
    index.set_ef(2 * M)

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        i, d = index.knn_query(q, k=k, num_threads=1)
        return (1 - d).astype(np.float32), i.astype(np.int64)

    return search, x.nbytes + len(x) * (16 * 2 * 4 + 16)


def candidates(x: np.ndarray) -> list[tuple[str, float, Search, int]]:
    """(name, build seconds, search, bytes held) for every index on offer here."""
    out = []
    for name, make in (
        ("exact", lambda: _ours(ExactIndex(x))),
        ("ivf", lambda: _ours(IVFIndex(x))),
        ("faiss-ivf", lambda: _faiss(x)),
        ("hnswlib", lambda: _hnsw(x)),
    ):
        t = time.perf_counter()
        built = make()
        if built is not None:
            out.append((name, time.perf_counter() - t, *built))
    return out


def _ours(index: ExactIndex | IVFIndex) -> tuple[Search, int]:
    held = sum(
        a.nbytes
        for a in vars(index).values()
        if isinstance(a, np.ndarray)  # vectors, ids, offsets, centroids
    )
    return index.search, held


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth, strict=True)]))


def speed(search: Search, q: np.ndarray, singles: int, batch: int) -> dict[str, float]:
    lat = []
    for row in q[:singles]:
        t = time.perf_counter()
        search(row[None, :], M)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(q), batch):
        search(q[i : i + batch], M)
    return {
        "p50_ms": round(1000 * float(np.percentile(lat, 50)), 3),
        "p99_ms": round(1000 * float(np.percentile(lat, 99)), 3),
        "batch_qps": round(len(q) / (time.perf_counter() - t), 1),
    }


def routing_agreement(
    x: np.ndarray,
    src: np.ndarray,
    base_rows: list[dict[str, Any]],
    q: np.ndarray,
    q_rows: list[dict[str, Any]],
    enc: EncoderCache,
) -> dict[str, float]:
    """kNN and outcome decisions of the real router, approximate vs exact index."""
    tasks = sorted({r["task"] for r in base_rows})
    models = sorted(base_rows[0]["scores"])
    keys = [f"v{i}" for i in range(len(x))]  # the examples' "texts": memo keys of their vectors
    enc.preload(keys, x)
    labelled = [LabelledExample(k, k, base_rows[s]["task"]) for k, s in zip(keys, src, strict=True)]
    outcomes = [
        OutcomeExample(k, k, base_rows[s]["scores"]) for k, s in zip(keys, src, strict=True)
    ]
    out: dict[str, float] = {}
    for mode, labels, k in (("knn", tasks, K_KNN), ("outcome", models, K_OUTCOME)):
        config = offline_config(labels, labels[0])
        chosen = {}
        for kind in ("exact", "approximate"):
            params = {"mode": mode, "k": k, "index": kind, "temperature": 0.2}
            router = build_router("embedding", params, config, enc)
            if mode == "knn":
                router.fit_labelled(labelled)  # type: ignore[attr-defined]
            else:
                router.fit_outcomes(outcomes)  # type: ignore[attr-defined]
            decisions = router.decide(q, context(config))  # type: ignore[attr-defined]
            chosen[kind] = [d.chosen[0] if d.chosen else None for d in decisions]
        same = np.mean(
            [a == b for a, b in zip(chosen["exact"], chosen["approximate"], strict=True)]
        )
        out[f"{mode}_agree"] = round(float(same), 4)
        if mode == "knn":
            for kind in ("exact", "approximate"):
                right = [c == r["task"] for c, r in zip(chosen[kind], q_rows, strict=True)]
                out[f"knn_accuracy_{kind}"] = round(float(np.mean(right)), 4)
    enc.clear_memo()
    return out


def run(data_dir: Path, sizes: list[int], n_queries: int = 500, singles: int = 200) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = load_queries(data_dir)
    enc = EncoderCache(batch_size=64)
    texts = [r["query"] for r in rows]
    warm(enc, texts)
    vecs = enc.encode_sync(texts)
    enc.clear_memo()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(rows))
    qi, bi = perm[:n_queries], perm[n_queries:]
    q, base = vecs[qi], vecs[bi]
    base_rows = [rows[i] for i in bi]
    q_rows = [rows[i] for i in qi]
    results = []
    for size in sizes:
        x, src = grow(base, size, np.random.default_rng(size))
        truth = ExactIndex(x).search(q, M)[1]
        for name, build_s, search, held in candidates(x):
            ids = search(q, M)[1]
            res: dict[str, Any] = {
                "size": size,
                "index": name,
                "build_s": round(build_s, 3),
                **speed(search, q, singles, batch=256),
                "mem_mb": round(held / 2**20, 1),
                "recall@10": round(recall(ids[:, :10], truth[:, :10]), 4),
                f"recall@{M}": round(recall(ids, truth), 4),
            }
            print(json.dumps(res), flush=True)
            results.append(res)
        agree = {"size": size, **routing_agreement(x, src, base_rows, q, q_rows, enc)}
        print(json.dumps(agree), flush=True)
        results.append(agree)
    return results


def table(results: list[dict]) -> str:
    cols = ["size", "index", "build_s", "p50_ms", "p99_ms", "batch_qps", "mem_mb"]
    cols += ["recall@10", f"recall@{M}"]
    lines = [" | ".join(cols)]
    for r in results:
        if "index" in r:
            lines.append(" | ".join(str(r[c]) for c in cols))
        else:
            lines.append(" | ".join(f"{k}={v}" for k, v in r.items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--sizes", default="10000,50000,200000")
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(table(run(Path(args.data_dir), sizes, args.queries)))


if __name__ == "__main__":
    main()
