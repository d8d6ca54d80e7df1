"""Symbolic-MoE skill-based recruiting: tag the query's skills, weigh experts by their profiles.

Skills come from a keyword LLM (sampled, recurring keywords kept, mapped to the profile
vocabulary by embedding) or, without one, from embedding similarity to the vocabulary.
Weight w_m = S(m, q) · gamma_m with gamma the sharpened global competence (DESIGN.md §3).
When the keyword LLM fails or hangs the router abstains (the pipeline's next router answers);
when the store is down the keyword cache is skipped.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from coe.routing import Candidate, ConfigError, RouteContext, RouteDecision, Router
from coe.routing.encoders import text_hash
from coe.store import keys

from ._common import (
    encoders_of,
    resolve_path,
)
from ._llm import (
    DEFAULT_CACHE_TTL_S,
    LLM_FAILURES,
    MAX_CACHE_TTL_S,
    abstain_llm_failed,
    cache_get,
    cache_put,
)

KEYWORD_PROMPT = (
    "List 2 to 5 short keywords naming the knowledge or skills needed to answer the "
    "question below. Reply with the keywords only, separated by commas.\n\nQuestion: {query}"
)


class SkillsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profiles: str = Field(description="profiles JSON built by `coe build profiles`")
    keyword_expert: str | None = Field(
        None, description="expert that writes keywords; none: tag skills by embedding similarity"
    )
    samples: int = Field(3, ge=1, le=10)
    min_count: int = Field(2, ge=1, description="keep keywords seen in this many samples")
    max_words: int = Field(3, ge=1, description="drop longer keywords")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(32, ge=4, le=256)
    min_similarity: float = Field(0.35, ge=-1, le=1, description="keyword → vocabulary cosine")
    tag_top: int = Field(3, ge=1, le=20, description="skills tagged per query by embedding")
    k: int = Field(3, ge=1, le=16)
    select: Literal["top", "sample"] = "top"
    seed: int | None = None
    cache_ttl_s: float = Field(
        DEFAULT_CACHE_TTL_S, gt=0, le=MAX_CACHE_TTL_S, description="cached keywords expire"
    )
    llm_timeout_s: float = Field(
        10.0, gt=0, le=600, description="abstain when the keyword LLM takes longer (all samples)"
    )
    encoder: str | None = None


def sharpened_competence(profiles: dict[str, dict[str, float]]) -> dict[str, float]:
    """gamma_m = x'² / sum x'², x' = G_m shifted positive (temperature 0.5 sharpening)."""
    g = {m: sum(p.values()) for m, p in profiles.items()}
    low = min(g.values())
    x = {m: (v - low + 1.0 if low <= 0 else v) for m, v in g.items()}
    total = sum(v * v for v in x.values())
    return {m: v * v / total for m, v in x.items()}


def recruit_weights(
    profiles: dict[str, dict[str, float]], gamma: dict[str, float], skills: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """(weights w_m = S·gamma normalised to sum 1, relevance S) for one query's skills."""
    rel = {m: float(sum(p.get(s, 0.0) for s in skills)) for m, p in profiles.items()}
    if not any(v > 0 for v in rel.values()):
        low = min(rel.values())
        rel_pos = {m: v - low + 1.0 for m, v in rel.items()}  # shift: nobody has the skills
    else:
        rel_pos = {m: max(v, 0.0) for m, v in rel.items()}
    w = {m: rel_pos[m] * gamma[m] for m in profiles}
    total = sum(w.values()) or 1.0
    return {m: v / total for m, v in w.items()}, rel


def parse_keywords(text: str, max_words: int) -> list[str]:
    parts = re.split(r"[,\n;]+", text.lower())
    out = []
    for part in parts:
        kw = re.sub(r"^[\s\-*\d.)]+|[\s.\"']+$", "", part).strip(" \"'")
        if kw and len(kw.split()) <= max_words and len(kw) <= 40:
            out.append(kw)
    return list(dict.fromkeys(out))


class SkillsRouter(Router):
    type_name = "skills"
    cache_namespace = "keywords"  # its LLM answers: keys.router_cache("keywords", ...)
    Params = SkillsParams
    params: SkillsParams

    vocabulary: list[str]
    profiles: dict[str, dict[str, float]]
    gamma: dict[str, float]
    _vocab_vecs: np.ndarray
    _aggregators: dict[str, str]
    _default_aggregator: str | None
    _cat_names: list[str]
    _cat_vecs: np.ndarray | None

    async def setup(self) -> None:
        raw = await self.deps.store.get(keys.artefact(self.name, "profiles"))
        if raw is None:
            path = resolve_path(self.deps, self.params.profiles)
            try:
                raw = path.read_text(encoding="utf-8")
            except OSError as err:
                raise ConfigError(
                    f"routers.{self.name}: cannot read profiles {path}: {err.strerror or err}"
                ) from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ConfigError(f"routers.{self.name}: profiles are not JSON: {err.msg}") from None
        await asyncio.to_thread(self.load, data)

    def load(self, data: dict[str, Any]) -> None:
        """Install a profiles document (see `coe build profiles`)."""
        try:
            self.vocabulary = [str(v) for v in data["vocabulary"]]
            self.profiles = {
                m: {s: float(x) for s, x in p.items()} for m, p in data["profiles"].items()
            }
        except (KeyError, AttributeError, TypeError, ValueError) as err:
            raise ConfigError(f"routers.{self.name}: malformed profiles ({err})") from None
        if not self.vocabulary or not self.profiles:
            raise ConfigError(f"routers.{self.name}: profiles have no vocabulary or experts")
        self.gamma = sharpened_competence(self.profiles)
        self._aggregators = dict(data.get("aggregators", {}))
        self._default_aggregator = data.get("default_aggregator")
        cents = data.get("category_centroids") or {}
        self._cat_names = list(cents)
        self._cat_vecs = (
            np.array([cents[c] for c in self._cat_names], dtype=np.float32) if cents else None
        )
        self._vocab_vecs = encoders_of(self.deps).encode_sync(self.vocabulary, self.params.encoder)

    # -- skills of a query ------------------------------------------------------------------
    async def keywords(self, query: str) -> list[str]:
        """Recurring keywords from several samples of the keyword LLM (cached in the store)."""
        p = self.params
        assert p.keyword_expert is not None and self.deps.chat is not None
        key = keys.router_cache(self.cache_namespace, text_hash(f"{p.keyword_expert}\n{query}"))
        cached = await cache_get(self.deps.store, key)
        if cached is not None:
            return list(json.loads(cached))
        counts: Counter[str] = Counter()
        messages = [{"role": "user", "content": KEYWORD_PROMPT.format(query=query[:2000])}]
        async with asyncio.timeout(p.llm_timeout_s):
            for _ in range(p.samples):
                text = await self.deps.chat(
                    p.keyword_expert, messages, temperature=p.temperature, max_tokens=p.max_tokens
                )
                counts.update(parse_keywords(text, p.max_words))
        need = min(p.min_count, p.samples)
        kept = [kw for kw, n in counts.most_common() if n >= need][:5]
        await cache_put(self.deps.store, key, json.dumps(kept), p.cache_ttl_s)
        return kept

    def tag(self, q: np.ndarray) -> list[list[str]]:
        """Skills by embedding similarity of the query to the vocabulary (no keyword LLM)."""
        sims = q @ self._vocab_vecs.T
        top = np.argsort(-sims, axis=1)[:, : self.params.tag_top]
        return [[self.vocabulary[int(j)] for j in row] for row in top]

    async def map_keywords(self, words: Sequence[str]) -> list[str]:
        if not words:
            return []
        vecs = await encoders_of(self.deps).encode(list(words), self.params.encoder)
        sims = vecs @ self._vocab_vecs.T
        best = sims.argmax(axis=1)
        keep = [
            self.vocabulary[int(j)]
            for i, j in enumerate(best)
            if sims[i, j] >= self.params.min_similarity
        ]
        return list(dict.fromkeys(keep))

    # -- serving ----------------------------------------------------------------------------
    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        return (await self.route_batch([query], ctx))[0]

    async def route_batch(self, queries: Sequence[str], ctx: RouteContext) -> list[RouteDecision]:
        q = await encoders_of(self.deps).encode(list(queries), self.params.encoder)
        use_llm = self.params.keyword_expert is not None and self.deps.chat is not None
        if not use_llm:
            return self.decide(q, self.tag(q), ctx, "embedding", [None] * len(queries))
        fallback = self.tag(q)
        out: list[RouteDecision] = []
        down: RouteDecision | None = None  # once the LLM failed, the rest of a batch abstains
        for i, query in enumerate(queries):
            if down is not None:
                out.append(down)
                continue
            try:
                words = await self.keywords(query)
            except LLM_FAILURES as err:
                p = self.params
                assert p.keyword_expert is not None
                down = abstain_llm_failed(
                    self.name, "keyword LLM", p.keyword_expert, p.llm_timeout_s, err
                )
                out.append(down)
                continue
            mapped = await self.map_keywords(words)
            if mapped:
                out += self.decide(q[i : i + 1], [mapped], ctx, "llm", [words])
            else:  # a small keyword model may answer with prose: say so, tag by embedding
                out += self.decide(
                    q[i : i + 1],
                    [fallback[i]],
                    ctx,
                    "embedding (keyword LLM gave no usable keywords)",
                    [words],
                )
        return out

    def decide(
        self,
        q: np.ndarray,
        skills: Sequence[Sequence[str]],
        ctx: RouteContext,
        tagging: str,
        keywords: Sequence[list[str] | None],
    ) -> list[RouteDecision]:
        out = []
        for i, sk in enumerate(skills):
            out.append(self._one(q[i], list(sk), ctx, tagging, keywords[i]))
        return out

    def _one(
        self,
        qv: np.ndarray,
        skills: list[str],
        ctx: RouteContext,
        tagging: str,
        keywords: list[str] | None,
    ) -> RouteDecision:
        live = {m: p for m, p in self.profiles.items() if m in ctx.experts}
        if not live:
            return RouteDecision.abstain(self.name, "no profiled expert is live")
        gamma = {m: self.gamma[m] for m in live}
        weights, rel = recruit_weights(live, gamma, skills)
        ranked = sorted(weights.items(), key=lambda kv: -kv[1])
        k = min(self.params.k, len(ranked))
        chosen_note = "top"
        if self.params.select == "sample":
            rng = random.Random(self.params.seed)
            picks = rng.choices([m for m, _ in ranked], weights=[w for _, w in ranked], k=k)
            first = list(dict.fromkeys(picks))
            ranked = [(m, weights[m]) for m in first] + [kv for kv in ranked if kv[0] not in first]
            k = len(first)
            chosen_note = f"sampled {self.params.k} with replacement"
        category = self._category(qv)
        aggregator = self._aggregators.get(category or "", self._default_aggregator)
        if tagging == "llm":
            how = f"skills from keyword LLM {self.params.keyword_expert}"
        elif tagging == "embedding":
            how = "no keyword LLM: skills tagged by embedding similarity"
        else:
            how = f"skills tagged by {tagging}"
        return RouteDecision(
            candidates=tuple(Candidate(m, round(w, 6)) for m, w in ranked),
            router=self.name,
            k=max(1, k),
            reason=f"{how}; skills {', '.join(skills) or '(none)'}; {chosen_note} by S·gamma",
            category=category,
            details={
                "skills": skills,
                "keywords": keywords,
                "tagging": tagging,
                "relevance": {m: round(v, 3) for m, v in rel.items()},
                "aggregator": aggregator,
            },
        )

    def _category(self, qv: np.ndarray) -> str | None:
        if self._cat_vecs is None:
            return None
        return self._cat_names[int(np.argmax(self._cat_vecs @ qv))]
