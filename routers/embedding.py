"""Embedding router: nearest labelled examples (kNN or centroids), or predicted outcomes.

Labels are experts or categories (mapped to experts through the category table);
with per-expert outcome scores it predicts each expert's score from the query's
neighbours and picks the best, optionally minus λ·cost (DESIGN.md §3); the predictions are
the decision's estimates, and the softmax of the utilities its probability. Neighbours come
from an index (coe/routing/index.py): exact, or approximate past `approximate_from` examples.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from coe.routing import Candidate, ConfigError, Estimate, RouteContext, RouteDecision, Router
from coe.routing.data import (
    LabelledExample,
    OutcomeExample,
    load_labelled,
    load_models,
    load_outcomes,
)
from coe.routing.index import APPROXIMATE_FROM, ExactIndex, Index, IndexKind, build_index

from ._common import (
    encoders_of,
    knn_label_scores,
    labelled_decision,
    neighbour_outcomes,
    resolve_path,
    softmax,
)


class EmbeddingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["knn", "centroid", "outcome"] = "knn"
    examples: str | None = Field(None, description="JSONL/CSV of labelled or outcome examples")
    split: str | None = Field(None, description="use only rows of this split (CSV `split`)")
    routes: dict[str, list[str]] = Field(default_factory=dict, description="inline utterances")
    k: int = Field(5, ge=1, le=1000)
    aggregate: Literal["mean", "max"] = "mean"
    threshold: float | None = Field(None, ge=-1, le=1, description="abstain below (cosine)")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per label")
    temperature: float = Field(0.05, gt=0, description="softmax temperature for probabilities")
    categories: dict[str, list[str]] = Field(
        default_factory=dict, description="label → experts; default: experts.yaml categories"
    )
    cost_lambda: float = Field(0.0, ge=0, description="outcome mode: utility = score - λ·cost")
    models_file: str | None = Field(None, description="models.json with prices (outcome mode)")
    min_score: float | None = Field(None, description="outcome mode: abstain if best predicted <")
    encoder: str | None = Field(None, description="local sentence-transformers folder")
    index: IndexKind = Field(
        "auto",
        description="nearest-neighbour index: exact, approximate (IVF), or auto "
        "(approximate from `approximate_from` examples); centroid mode is always exact",
    )
    approximate_from: int = Field(
        APPROXIMATE_FROM, ge=1, description="auto: examples from which the index is approximate"
    )


class EmbeddingRouter(Router):
    type_name = "embedding"
    Params = EmbeddingParams
    params: EmbeddingParams

    labels: list[str]
    _index: Index
    _label_idx: np.ndarray
    _outcomes: np.ndarray
    _costs: dict[str, float]

    async def setup(self) -> None:
        p = self.params
        if p.examples is None and not p.routes:
            raise ConfigError(f"routers.{self.name}: give `examples` (a file) or `routes`")
        if p.mode == "outcome":
            if p.examples is None:
                raise ConfigError(f"routers.{self.name}: outcome mode needs an outcomes file")
            rows = load_outcomes(resolve_path(self.deps, p.examples))
            costs = None
            if p.models_file:
                models = load_models(resolve_path(self.deps, p.models_file))
                costs = {m.name: m.cost for m in models.values()}
            await asyncio.to_thread(self.fit_outcomes, rows, costs)
            return
        examples = [
            LabelledExample(f"{lab}-{i}", t, lab)
            for lab, ts in p.routes.items()
            for i, t in enumerate(ts)
        ]
        if p.examples:
            examples += load_labelled(resolve_path(self.deps, p.examples), p.split)
        await asyncio.to_thread(self.fit_labelled, examples)

    # -- fitting (also used by offline evaluation, with the same classes that serve) ----------
    def fit_labelled(self, examples: Sequence[LabelledExample]) -> None:
        usable = [e for e in examples if e.label is not None]
        if not usable:
            raise ConfigError(f"routers.{self.name}: no labelled examples")
        self.labels = sorted({e.label for e in usable if e.label})
        index = {lab: i for i, lab in enumerate(self.labels)}
        self._label_idx = np.array([index[e.label] for e in usable if e.label])
        vecs = encoders_of(self.deps).encode_sync([e.text for e in usable], self.params.encoder)
        if self.params.mode == "centroid":
            cents = np.stack(
                [vecs[self._label_idx == j].mean(axis=0) for j in range(len(self.labels))]
            )
            vecs = cents / np.linalg.norm(cents, axis=1, keepdims=True)
            self._label_idx = np.arange(len(self.labels))
            self._index = ExactIndex(vecs)
        else:
            self._index = self._build_index(vecs)

    def fit_outcomes(
        self, rows: Sequence[OutcomeExample], costs: dict[str, float] | None = None
    ) -> None:
        if not rows:
            raise ConfigError(f"routers.{self.name}: no outcome examples")
        self.labels = sorted({m for r in rows for m in r.scores})
        self._outcomes = np.array(
            [[r.scores.get(m, 0.0) for m in self.labels] for r in rows], dtype=np.float32
        )
        vecs = encoders_of(self.deps).encode_sync([r.text for r in rows], self.params.encoder)
        self._index = self._build_index(vecs)
        self._costs = dict(costs or {})

    def _build_index(self, vecs: np.ndarray) -> Index:
        return build_index(vecs, self.params.index, self.params.approximate_from)

    def describe_index(self) -> dict[str, Any]:
        """Which index serves this router, and its size and settings."""
        return self._index.describe()

    # -- serving --------------------------------------------------------------------------
    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        return (await self.route_batch([query], ctx))[0]

    async def route_batch(self, queries: Sequence[str], ctx: RouteContext) -> list[RouteDecision]:
        q = await encoders_of(self.deps).encode(list(queries), self.params.encoder)
        return self.decide(q, ctx)

    def decide(self, q: np.ndarray, ctx: RouteContext) -> list[RouteDecision]:
        """Decisions for already-encoded queries (unit-norm rows)."""
        decisions = (
            self._decide_outcome(q, ctx) if self.params.mode == "outcome" else self._decide(q, ctx)
        )
        for d in decisions:
            d.details["index"] = self._index.name
        return decisions

    def label_scores(self, q: np.ndarray) -> np.ndarray:
        """(queries x labels) kNN or centroid scores."""
        p = self.params
        index, n_labels = self._index, len(self.labels)
        if isinstance(index, ExactIndex) and p.mode == "centroid":  # always exact: few vectors
            return index.similarities(q)
        return knn_label_scores(index, q, self._label_idx, n_labels, p.k, p.aggregate)[0]

    def _decide(self, q: np.ndarray, ctx: RouteContext) -> list[RouteDecision]:
        p = self.params
        raw = self.label_scores(q)
        probs = softmax(raw, p.temperature)
        cats = p.categories or ctx.categories
        return [
            labelled_decision(
                self.name,
                self.labels,
                raw[i],
                probs[i],
                ctx,
                cats,
                p.thresholds,
                p.threshold,
                "label",
            )
            for i in range(raw.shape[0])
        ]

    def predict_outcomes(self, q: np.ndarray) -> np.ndarray:
        """(queries x outcome models) predicted scores of already-encoded queries."""
        near, ids = self._index.search(q, self.params.k)
        return neighbour_outcomes(near, ids, self._outcomes, self.params.temperature)

    def cost_of(self, expert: str, ctx: RouteContext) -> float:
        if expert in self._costs:
            return self._costs[expert]
        spec = ctx.experts.get(expert)
        return float(spec.cost) if spec is not None else 0.0

    def _decide_outcome(self, q: np.ndarray, ctx: RouteContext) -> list[RouteDecision]:
        p = self.params
        live = [i for i, m in enumerate(self.labels) if m in ctx.experts]
        if not live:
            return [
                RouteDecision.abstain(self.name, "no outcome model is a live expert")
                for _ in range(q.shape[0])
            ]
        names = [self.labels[i] for i in live]
        costs = np.array([self.cost_of(m, ctx) for m in names], dtype=np.float32)
        pred = self.predict_outcomes(q)[:, live]
        utility = pred - p.cost_lambda * costs
        probs = softmax(utility, p.temperature)
        out = []
        for i in range(pred.shape[0]):
            order = np.argsort(-utility[i])
            best = names[int(order[0])]
            predicted = {names[int(j)]: round(float(pred[i, j]), 4) for j in order}
            if p.min_score is not None and float(pred[i].max()) < p.min_score:
                out.append(
                    RouteDecision.abstain(
                        self.name,
                        f"best predicted score {pred[i].max():.3f} < {p.min_score}",
                        predicted=predicted,
                    )
                )
                continue
            out.append(
                RouteDecision(
                    candidates=tuple(
                        Candidate(names[int(j)], round(float(probs[i, j]), 6)) for j in order
                    ),
                    router=self.name,
                    reason=(
                        f"{best}: predicted score {pred[i, order[0]]:.3f} from {p.k} neighbours"
                        + (f", cost λ={p.cost_lambda}" if p.cost_lambda else "")
                    ),
                    details={"predicted": predicted, "cost_lambda": p.cost_lambda},
                    estimates=tuple(
                        Estimate(names[int(j)], round(float(pred[i, j]), 6), cost=float(costs[j]))
                        for j in order
                    ),
                    probability=min(1.0, round(float(probs[i, order[0]]), 6)),
                )
            )
        return out
