"""Shared pieces of the embedding-based routers: examples, similarity scoring, decisions.

Private (leading underscore), so the plug-in loader does not treat it as a strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from coe.routing import Candidate, ConfigError, RouteContext, RouteDecision, RouterDeps
from coe.routing.encoders import EncoderCache
from coe.routing.index import ExactIndex, Index


def encoders_of(deps: RouterDeps) -> EncoderCache:
    enc = deps.encoders
    if enc is None:
        raise ConfigError("this router needs an encoder cache (deps.encoders)")
    if not isinstance(enc, EncoderCache):
        raise ConfigError(f"deps.encoders must be an EncoderCache, got {type(enc).__name__}")
    return enc


def resolve_path(deps: RouterDeps, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else deps.base_dir / p


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = x / max(temperature, 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def per_label_topk(
    sims: np.ndarray, label_idx: np.ndarray, n_labels: int, k: int, aggregate: str
) -> np.ndarray:
    """(queries x labels): mean or max of each label's k most similar examples."""
    out = np.full((sims.shape[0], n_labels), -1.0, dtype=np.float32)
    for j in range(n_labels):
        cols = sims[:, label_idx == j]
        if cols.shape[1] == 0:
            continue
        kk = min(k, cols.shape[1])
        top = -np.partition(-cols, kk - 1, axis=1)[:, :kk]
        out[:, j] = top.max(axis=1) if aggregate == "max" else top.mean(axis=1)
    return out


def per_label_neighbours(
    scores: np.ndarray,
    ids: np.ndarray,
    label_idx: np.ndarray,
    n_labels: int,
    k: int,
    aggregate: str,
) -> np.ndarray:
    """(queries x labels) from each query's M nearest examples (best first; id -1 = none):
    mean or max of each label's k best among them. A label with no neighbour among them
    scores -1; one with fewer than its k is padded with the lowest similarity retrieved,
    an upper bound on its missing neighbours, so a single lucky hit does not outrank a
    label with k good ones."""
    valid = ids >= 0
    labs = np.where(valid, label_idx[np.where(valid, ids, 0)], -1)
    floor = np.where(valid, scores, np.inf).min(axis=1)
    sizes = np.bincount(label_idx, minlength=n_labels)
    out = np.full((scores.shape[0], n_labels), -1.0, dtype=np.float32)
    for j in range(n_labels):
        mine = labs == j
        take = mine & (np.cumsum(mine, axis=1) <= k)
        found = take.sum(axis=1)
        hit = found > 0
        if aggregate == "max":
            agg = np.where(take, scores, -np.inf).max(axis=1)
        else:
            need = min(k, int(sizes[j]))
            total = np.where(take, scores, 0.0).sum(axis=1) + (need - found) * floor
            agg = total / max(need, 1)
        out[hit, j] = agg[hit]
    return out


def knn_label_scores(
    index: Index,
    q: np.ndarray,
    label_idx: np.ndarray,
    n_labels: int,
    k: int,
    aggregate: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(queries x labels) kNN label scores, and each query's nearest-example cosine, from
    either kind of index: the exact per-label path over every example (similarity matrices
    bounded to 64 MiB), or labels scored from the neighbours the approximate index finds."""
    if isinstance(index, ExactIndex):
        step = max(1, (1 << 24) // max(len(index), 1))
        raw, nearest = [], []
        for i in range(0, max(q.shape[0], 1), step):
            sims = index.similarities(q[i : i + step])
            raw.append(per_label_topk(sims, label_idx, n_labels, k, aggregate))
            nearest.append(sims.max(axis=1))
        return np.concatenate(raw), np.concatenate(nearest)
    near, ids = index.search(q, max(k * n_labels, 64))
    return per_label_neighbours(near, ids, label_idx, n_labels, k, aggregate), near[:, 0]


def neighbour_outcomes(
    near: np.ndarray, ids: np.ndarray, scores: np.ndarray, temperature: float
) -> np.ndarray:
    """(queries x experts): similarity-weighted mean of the given neighbours' outcome
    scores (`near`, `ids`: an index's search result; id -1 = none, weight 0)."""
    w = softmax(np.where(ids >= 0, near, -np.inf), temperature)
    pred: np.ndarray = np.einsum("qk,qke->qe", w, scores[np.maximum(ids, 0)])
    return pred


def expert_scores(
    labels: Sequence[str],
    probs: np.ndarray,
    ctx: RouteContext,
    categories: Mapping[str, Sequence[str]],
) -> dict[str, float]:
    """Map label probabilities to experts: labels are experts or categories of experts."""
    out: dict[str, float] = {}
    for label, p in zip(labels, probs, strict=True):
        if label in ctx.experts:
            targets: Sequence[str] = [label]
        else:
            targets = categories.get(label, ())
        live = [e for e in targets if e in ctx.experts]
        for e in live:  # a category naming several experts shares its mass between them
            out[e] = out.get(e, 0.0) + float(p) / len(live)
    return out


def labelled_decision(
    router: str,
    labels: Sequence[str],
    raw: np.ndarray,
    probs: np.ndarray,
    ctx: RouteContext,
    categories: Mapping[str, Sequence[str]],
    thresholds: Mapping[str, float],
    default_threshold: float | None,
    what: str,
) -> RouteDecision:
    """One query's label scores → a decision, abstaining below the label's threshold."""
    order = np.argsort(-raw)
    best = labels[int(order[0])]
    best_raw = float(raw[order[0]])
    top = {labels[int(i)]: round(float(raw[i]), 4) for i in order[:5]}
    limit = thresholds.get(best, default_threshold)
    if limit is not None and best_raw < limit:
        return RouteDecision.abstain(
            router,
            f"best {what} {best!r} scored {best_raw:.3f} < threshold {limit:.3f}",
            top=top,
        )
    scores = expert_scores(labels, probs, ctx, categories)
    if not scores:
        return RouteDecision.abstain(router, f"{what} {best!r} maps to no live expert", top=top)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    category = None if best in ctx.experts else best
    return RouteDecision(
        candidates=tuple(Candidate(e, round(s, 6)) for e, s in ranked),
        router=router,
        reason=f"nearest {what} {best!r} (score {best_raw:.3f})",
        category=category,
        details={"top": top},
    )
