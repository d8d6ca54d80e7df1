"""Routing artefacts built from outcome data: category → expert maps and skill profiles.

Shared by `coe build ...` (which writes them for experts.yaml / routers) and by the
evaluation (which builds them on each training split only).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from coe.routing.data import OutcomeExample
from coe.routing.encoders import EncoderCache

CORRECT = 0.5  # outcome scores are 0..1; at or above this an answer counts as correct


def category_map(
    rows: Sequence[OutcomeExample],
    costs: dict[str, float] | None = None,
    budget: float | None = None,
) -> dict[str, list[str]]:
    """Best expert per category (task) by mean score; under `budget`, only experts costing ≤ it."""
    by_cat: dict[str, list[OutcomeExample]] = defaultdict(list)
    for r in rows:
        by_cat[r.task or "other"].append(r)
    out = {}
    for cat, items in sorted(by_cat.items()):
        models = sorted({m for r in items for m in r.scores})
        if budget is not None and costs is not None:
            models = [m for m in models if costs.get(m, 0.0) <= budget] or models
        mean = {m: float(np.mean([r.scores.get(m, 0.0) for r in items])) for m in models}
        cost = costs or {}
        out[cat] = [max(models, key=lambda m: (round(mean[m], 6), -cost.get(m, 0.0)))]
    return out


def category_scores(rows: Sequence[OutcomeExample]) -> dict[str, dict[str, float]]:
    """Mean score of every expert per category (task), for the category router's step 2."""
    by_cat: dict[str, list[OutcomeExample]] = defaultdict(list)
    for r in rows:
        by_cat[r.task or "other"].append(r)
    return {
        cat: {
            m: round(float(np.mean([r.scores.get(m, 0.0) for r in items])), 4)
            for m in sorted({m for r in items for m in r.scores})
        }
        for cat, items in sorted(by_cat.items())
    }


def vocabulary(texts: Sequence[str], size: int = 200, extra: Sequence[str] = ()) -> list[str]:
    """Skill vocabulary without a keyword LLM: the most salient TF-IDF terms, plus `extra`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(
        stop_words="english",
        ngram_range=(1, 2),
        min_df=5,
        max_df=0.2,
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]{2,}\b",
    )
    m = vec.fit_transform(texts)
    weight = np.asarray(m.sum(axis=0)).ravel()
    terms = vec.get_feature_names_out()
    top = [str(terms[i]) for i in np.argsort(-weight)[:size]]
    names = [re.sub(r"[_\-]+", " ", e) for e in extra]
    return list(dict.fromkeys([*names, *top]))


def tag_by_embedding(
    q: np.ndarray, vocab_vecs: np.ndarray, vocab: Sequence[str], top: int
) -> list[list[str]]:
    sims = q @ vocab_vecs.T
    idx = np.argsort(-sims, axis=1)[:, :top]
    return [[vocab[int(j)] for j in row] for row in idx]


def build_profiles(
    rows: Sequence[OutcomeExample],
    encoders: EncoderCache,
    *,
    vocab_size: int = 200,
    tag_top: int = 3,
    skills: Sequence[Sequence[str]] | None = None,
    vocab: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Symbolic-MoE profiles: +1/-1 per skill per expert per validation question.

    Continuous outcome scores count as 2·score - 1 (+-1 when scores are 0/1). Without
    keyword-LLM `skills`, each question is tagged with its `tag_top` nearest vocabulary
    terms, exactly as the router tags queries when no keyword LLM is configured.
    """
    texts = [r.text for r in rows]
    q = encoders.encode_sync(texts)
    tasks = sorted({r.task for r in rows if r.task})
    tagging = "llm" if skills is not None else "embedding"
    vocab = list(vocab) if vocab is not None else vocabulary(texts, vocab_size, tasks)
    if skills is None:
        skills = tag_by_embedding(q, encoders.encode_sync(vocab), vocab, tag_top)
    models = sorted({m for r in rows for m in r.scores})
    prof: dict[str, dict[str, float]] = {m: defaultdict(float) for m in models}
    for r, sk in zip(rows, skills, strict=True):
        for m in models:
            s = 2.0 * r.scores.get(m, 0.0) - 1.0
            for skill in sk:
                prof[m][skill] += s
    centroids = {}
    for t in tasks:
        c = q[[i for i, r in enumerate(rows) if r.task == t]].mean(axis=0)
        centroids[t] = [round(float(x), 5) for x in c / np.linalg.norm(c)]
    aggs, default_agg = choose_aggregators(rows)
    return {
        "vocabulary": vocab,
        "profiles": {m: {s: round(v, 3) for s, v in p.items() if v} for m, p in prof.items()},
        "aggregators": aggs,
        "default_aggregator": default_agg,
        "category_centroids": centroids,
        "tagging": tagging,
    }


def choose_aggregators(rows: Sequence[OutcomeExample]) -> tuple[dict[str, str], str | None]:
    """Per category, the expert most often right where most candidates are wrong.

    The paper's test (pick the correct answer out of 1 correct + 2 wrong candidates) needs
    the experts' answers; with outcome scores only we approximate it by each expert's
    accuracy on questions where at least one expert is right and at least two are wrong.
    """
    by_cat: dict[str, list[OutcomeExample]] = defaultdict(list)
    for r in rows:
        right = sum(v >= CORRECT for v in r.scores.values())
        wrong = sum(v < CORRECT for v in r.scores.values())
        if right >= 1 and wrong >= 2:
            by_cat[r.task or "other"].append(r)
            by_cat["*"].append(r)
    pick = {}
    for cat, items in by_cat.items():
        models = sorted({m for r in items for m in r.scores})
        acc = {m: np.mean([r.scores.get(m, 0.0) >= CORRECT for r in items]) for m in models}
        pick[cat] = max(models, key=lambda m: acc[m])
    default = pick.pop("*", None)
    return pick, default
