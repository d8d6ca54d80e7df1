"""Nearest-neighbour indexes over unit-norm example vectors: the router's third axis.

Encoder, examples and index are separate choices (as in semantic-router). `ExactIndex`
scores every example (right for small route sets); `IVFIndex` is an inverted file in
numpy: a spherical k-means coarse quantiser and a scan of the `nprobe` lists nearest to
the query, which keeps a query's cost well below O(N·d) past tens of thousands of examples.
`build_index` picks between them (`auto`: exact below `approximate_from` examples).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

import numpy as np

from coe.errors import ConfigError

IndexKind = Literal["auto", "exact", "approximate"]

APPROXIMATE_FROM = (
    20_000  # examples; below this, scoring all of them is cheap (bench/index_bench.py)
)
_CHUNK_FLOATS = 1 << 24  # similarity-matrix floats computed at once (64 MiB of float32)
_GATHER_BELOW = 8  # IVF batches up to this many queries copy their lists instead of grouping


class Index(Protocol):
    """`search(q, k)`: for unit-norm query rows, the k most similar examples of each, best
    first, as (scores n x k float32, ids n x k int64). Rows that find fewer than k pad with
    score -inf and id -1; k is capped at the number of examples."""

    name: str

    def __len__(self) -> int: ...

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ConfigError(f"index vectors must be a 2-d matrix, got shape {x.shape}")
    return x


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column positions and values of each row's k largest, best first."""
    kk = min(k, scores.shape[1])
    if kk == 0:
        empty = np.zeros((scores.shape[0], 0))
        return empty.astype(np.int64), empty.astype(np.float32)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


class ExactIndex:
    """Every example scored: one matrix product (queries chunked to bound memory)."""

    name = "exact"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = _as_matrix(vectors)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def similarities(self, q: np.ndarray) -> np.ndarray:
        """The full (queries x examples) cosine matrix."""
        out: np.ndarray = np.asarray(q, dtype=np.float32) @ self.vectors.T
        return out

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_matrix(q)
        kk = min(k, len(self))
        ids = np.empty((q.shape[0], kk), dtype=np.int64)
        scores = np.empty((q.shape[0], kk), dtype=np.float32)
        step = max(1, _CHUNK_FLOATS // max(len(self), 1))
        for start in range(0, q.shape[0], step):
            part = slice(start, start + step)
            ids[part], scores[part] = _top_k(self.similarities(q[part]), kk)
        return scores, ids

    def describe(self) -> dict[str, Any]:
        return {"index": self.name, "size": len(self)}


def spherical_kmeans(x: np.ndarray, n: int, iterations: int = 8, seed: int = 0) -> np.ndarray:
    """n unit-norm centroids of unit-norm rows x (cosine k-means; empty clusters re-seeded)."""
    rng = np.random.default_rng(seed)
    cents = x[rng.choice(x.shape[0], size=n, replace=False)].copy()
    for _ in range(iterations):
        assign = np.argmax(x @ cents.T, axis=1)
        order = np.argsort(assign, kind="stable")
        present, starts = np.unique(assign[order], return_index=True)
        sums = np.zeros_like(cents)
        sums[present] = np.add.reduceat(x[order], starts, axis=0)
        empty = np.flatnonzero(~sums.any(axis=1))
        sums[empty] = x[rng.choice(x.shape[0], size=len(empty), replace=False)]
        cents = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return cents.astype(np.float32)


class IVFIndex:
    """Inverted file: examples grouped by their nearest k-means centroid ("list"), stored
    contiguously by list; a query scans only the `nprobe` lists whose centroids are nearest.

    Defaults (`n_lists` ≈ √N, `nprobe` = a fifth of the lists, at least 16; k-means on ≤ 32
    points per list) come from bench/index_bench.py: on real MiniLM vectors at 50k-200k
    examples, recall@10 ≈ 0.99 and kNN labels agree with exact search on ≥ 99% of queries,
    scanning about a fifth of the examples. Sentence embeddings are not tightly clustered,
    so far fewer probes lose recall quickly.
    """

    name = "ivf"

    def __init__(
        self,
        vectors: np.ndarray,
        n_lists: int | None = None,
        nprobe: int | None = None,
        train_per_list: int = 32,
        iterations: int = 8,
        seed: int = 0,
    ) -> None:
        x = _as_matrix(vectors)
        if x.shape[0] == 0:
            raise ConfigError("an IVF index needs at least one example")
        if nprobe is not None and nprobe < 1:
            raise ConfigError(f"nprobe must be >= 1, got {nprobe}")
        self.n_lists = max(1, min(n_lists or round(math.sqrt(x.shape[0])), x.shape[0]))
        self.nprobe = min(nprobe or max(16, math.ceil(self.n_lists / 5)), self.n_lists)
        rng = np.random.default_rng(seed)
        train_n = min(x.shape[0], train_per_list * self.n_lists)
        sample = x[rng.choice(x.shape[0], size=train_n, replace=False)]
        self.centroids = spherical_kmeans(sample, self.n_lists, iterations, seed)
        step = max(1, _CHUNK_FLOATS // self.n_lists)
        assign = np.concatenate(
            [
                np.argmax(x[i : i + step] @ self.centroids.T, axis=1)
                for i in range(0, x.shape[0], step)
            ]
        )
        self.ids = np.argsort(assign, kind="stable").astype(np.int64)
        self.vectors = x[self.ids]  # contiguous per list: a list is one slice
        counts = np.bincount(assign, minlength=self.n_lists)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._empty = counts == 0
        self._rows = [
            np.arange(lo, hi) for lo, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_matrix(q)
        n, kk = q.shape[0], min(k, len(self))
        coarse = q @ self.centroids.T
        coarse[:, self._empty] = -np.inf
        probe = _top_k(coarse, self.nprobe)[0]  # (n x nprobe) list numbers
        if n <= _GATHER_BELOW:
            return self._gather(q, probe, kk)
        # each (query, probed list) pair keeps its list's best kk in its own slot
        best = np.full((n, probe.shape[1], kk), -np.inf, dtype=np.float32)
        where = np.full((n, probe.shape[1], kk), -1, dtype=np.int64)
        flat = probe.ravel()
        order = np.argsort(flat, kind="stable")
        lists, starts = np.unique(flat[order], return_index=True)
        bounds = np.append(starts, len(order))
        for j, lst in enumerate(lists):
            pairs = order[bounds[j] : bounds[j + 1]]
            rows, slots = pairs // probe.shape[1], pairs % probe.shape[1]
            lo, hi = int(self.offsets[lst]), int(self.offsets[lst + 1])
            pos, vals = _top_k(q[rows] @ self.vectors[lo:hi].T, kk)
            best[rows, slots, : pos.shape[1]] = vals
            where[rows, slots, : pos.shape[1]] = self.ids[lo + pos]
        pos, scores = _top_k(best.reshape(n, -1), kk)
        ids = np.take_along_axis(where.reshape(n, -1), pos, axis=1)
        return scores.astype(np.float32), ids

    def _gather(self, q: np.ndarray, probe: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Few queries: each one's probed lists scored in place (no copy), then ranked."""
        scores = np.full((q.shape[0], kk), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], kk), -1, dtype=np.int64)
        for i, lists in enumerate(probe):
            rows = np.concatenate([self._rows[lst] for lst in lists])
            sims = np.concatenate(
                [self.vectors[self.offsets[lst] : self.offsets[lst + 1]] @ q[i] for lst in lists]
            )
            pos, vals = _top_k(sims[None, :], kk)
            scores[i, : pos.shape[1]] = vals[0]
            ids[i, : pos.shape[1]] = self.ids[rows[pos[0]]]
        return scores, ids

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.name,
            "size": len(self),
            "lists": self.n_lists,
            "nprobe": self.nprobe,
        }


def build_index(
    vectors: np.ndarray,
    kind: IndexKind = "auto",
    approximate_from: int = APPROXIMATE_FROM,
    **ivf: Any,
) -> Index:
    """`exact`, `approximate` (IVF), or `auto`: exact below `approximate_from` examples."""
    x = _as_matrix(vectors)
    if kind == "exact" or (kind == "auto" and x.shape[0] < approximate_from):
        return ExactIndex(x)
    if kind in ("approximate", "auto"):
        return IVFIndex(x, **ivf)
    raise ConfigError(f"unknown index kind {kind!r}: use auto, exact or approximate")
