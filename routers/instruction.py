"""GLIDER global routing: match an LLM-written task instruction for the query to experts'.

Each expert carries a one-sentence task instruction (a JSON file from `coe build
instructions`, the store, or its description); the query's instruction is cached by
query hash, so a repeated query costs no LLM call. Scores are softmax(alpha·cosine): each
expert's is its estimate (the probability it is the right one), the first's the decision's
probability.
When the instruction LLM fails or hangs the router abstains (the pipeline's next router
answers); when the store is down the cache is skipped. A weak writer is noticed too: an
instruction far from the query it describes makes the router abstain, and when most recent
instructions were rejected the writer is not asked at all for a while.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from coe.routing import Candidate, ConfigError, Estimate, RouteContext, RouteDecision, Router
from coe.routing.encoders import text_hash
from coe.store import keys

from ._common import (
    encoders_of,
    resolve_path,
    softmax,
)
from ._llm import (
    DEFAULT_CACHE_TTL_S,
    LLM_FAILURES,
    MAX_CACHE_TTL_S,
    abstain_llm_failed,
    cache_get,
    cache_put,
)

log = logging.getLogger(__name__)

QUERY_PROMPT = (
    "Write one sentence that describes the task the following request asks for, starting "
    "with 'The task is'. Do not answer it.\n\nRequest: {query}"
)


class InstructionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction_expert: str | None = Field(
        None, description="expert that writes instructions; none: embed the query itself"
    )
    instructions: str | None = Field(None, description="JSON {expert: instruction}")
    k: int = Field(2, ge=1, le=16)
    alpha: float = Field(20.0, gt=0, description="softmax(alpha·cosine)")
    max_tokens: int = Field(32, ge=4, le=256)
    temperature: float = Field(0.0, ge=0, le=2)
    cache_ttl_s: float = Field(
        DEFAULT_CACHE_TTL_S, gt=0, le=MAX_CACHE_TTL_S, description="cached instructions expire"
    )
    llm_timeout_s: float = Field(
        10.0, gt=0, le=600, description="abstain when the instruction LLM takes longer"
    )
    encoder: str | None = None
    # SmolLM2-135M on the shipped requests (bench/glider_eval.py): its off-topic
    # instructions fall at cosine 0.02-0.31, its usable ones at 0.52 and up.
    min_query_similarity: float = Field(
        0.4,
        ge=-1,
        le=1,
        description="abstain when the written instruction's cosine to the query itself is "
        "lower: the writer did not describe this query (-1: never)",
    )
    quality_window: int = Field(
        20, ge=1, le=10_000, description="recent instructions the writer is judged on"
    )
    pause_rejected_fraction: float = Field(
        0.6,
        gt=0,
        le=1.01,
        description="when at least this share of the last `quality_window` instructions "
        "was rejected, stop asking the writer for `pause_s` (above 1: never)",
    )
    pause_s: float = Field(
        300.0, ge=0, le=86_400, description="how long a weak writer is not asked"
    )


class WriterRecord:
    """Which of the writer's recent instructions were rejected; pauses a writer that is weak."""

    def __init__(self, window: int, fraction: float, pause_s: float) -> None:
        self.rejected: deque[bool] = deque(maxlen=window)
        self.fraction = fraction
        self.pause_s = pause_s
        self.paused_until = 0.0
        self.why = ""

    def paused(self) -> str | None:
        """Why the writer is not asked now, or None when it may be."""
        return self.why if time.monotonic() < self.paused_until else None

    def add(self, rejected: bool) -> None:
        self.rejected.append(rejected)
        n, bad = len(self.rejected), sum(self.rejected)
        if n == self.rejected.maxlen and bad >= self.fraction * n:
            self.paused_until = time.monotonic() + self.pause_s
            self.why = (
                f"{bad} of its last {n} instructions were far from their queries; "
                f"not asked for {self.pause_s:g} s"
            )
            self.rejected.clear()  # judged afresh after the pause


class InstructionRouter(Router):
    type_name = "instruction"
    cache_namespace = "instruction"  # its LLM answers: keys.router_cache("instruction", ...)
    Params = InstructionParams
    params: InstructionParams

    expert_instructions: dict[str, str]
    sources: dict[str, str]
    _names: list[str]
    _vecs: np.ndarray
    record: WriterRecord

    async def setup(self) -> None:
        p = self.params
        self.record = WriterRecord(p.quality_window, p.pause_rejected_fraction, p.pause_s)
        found: dict[str, str] = {}
        if self.params.instructions:
            path = resolve_path(self.deps, self.params.instructions)
            try:
                found = {
                    str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()
                }
            except (OSError, json.JSONDecodeError, AttributeError) as err:
                raise ConfigError(
                    f"routers.{self.name}: cannot read instructions {path}: {err}"
                ) from None
        stored = await self.deps.store.get(keys.artefact(self.name, "instructions"))
        if stored:
            found.update(json.loads(stored))
        await asyncio.to_thread(self.fit, found)

    def fit(self, instructions: dict[str, str]) -> None:
        """Expert instructions: given ones, else each configured expert's description."""
        self.expert_instructions, self.sources = {}, {}
        for spec in self.deps.config.experts:
            text = instructions.get(spec.name)
            source = "instruction"
            if not text:
                text, source = spec.description or spec.name, "description"
            self.expert_instructions[spec.name] = text
            self.sources[spec.name] = source
        self._names = list(self.expert_instructions)
        self._vecs = encoders_of(self.deps).encode_sync(
            [self.expert_instructions[n] for n in self._names], self.params.encoder
        )

    async def instruction(self, query: str) -> str:
        """The query's task instruction, from the store cache or one LLM call."""
        p = self.params
        assert p.instruction_expert is not None and self.deps.chat is not None
        key = keys.router_cache(self.cache_namespace, text_hash(f"{p.instruction_expert}\n{query}"))
        cached = await cache_get(self.deps.store, key)
        if cached is not None:
            return cached
        messages = [{"role": "user", "content": QUERY_PROMPT.format(query=query[:2000])}]
        async with asyncio.timeout(p.llm_timeout_s):
            text = await self.deps.chat(
                p.instruction_expert, messages, temperature=p.temperature, max_tokens=p.max_tokens
            )
        text = " ".join(text.split()) or query
        await cache_put(self.deps.store, key, text, p.cache_ttl_s)
        return text

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        return (await self.route_batch([query], ctx))[0]

    async def route_batch(self, queries: Sequence[str], ctx: RouteContext) -> list[RouteDecision]:
        p = self.params
        enc = encoders_of(self.deps)
        if p.instruction_expert is None or self.deps.chat is None:
            return self.decide(await enc.encode(list(queries), p.encoder), ctx, None)
        texts: dict[int, str] = {}
        failed: dict[int, RouteDecision] = {}
        down: RouteDecision | None = None  # once the LLM failed, the rest of a batch abstains
        for i, query in enumerate(queries):
            if down is None and (why := self.record.paused()) is not None:
                down = RouteDecision.abstain(
                    self.name, f"instruction writer {p.instruction_expert!r} paused: {why}"
                )
            if down is not None:
                failed[i] = down
                continue
            try:
                texts[i] = await self.instruction(query)
            except LLM_FAILURES as err:
                down = failed[i] = abstain_llm_failed(
                    self.name, "instruction LLM", p.instruction_expert, p.llm_timeout_s, err
                )
        written = list(texts.values())
        asked = [queries[i] for i in texts]
        vecs = await enc.encode([*written, *asked], p.encoder) if written else None
        decided = iter(
            self.decide(vecs[: len(written)], ctx, written, vecs[len(written) :])
            if vecs is not None
            else []
        )
        return [failed[i] if i in failed else next(decided) for i in range(len(queries))]

    def decide(
        self,
        vecs: np.ndarray,
        ctx: RouteContext,
        instructions: Sequence[str] | None = None,
        query_vecs: np.ndarray | None = None,
    ) -> list[RouteDecision]:
        """Decisions for embedded instructions (or queries); with `query_vecs`, an instruction
        far from its own query is rejected and the writer's record updated."""
        live = [i for i, n in enumerate(self._names) if n in ctx.experts]
        if not live:
            return [
                RouteDecision.abstain(self.name, "no expert with an instruction is live")
                for _ in range(vecs.shape[0])
            ]
        names = [self._names[i] for i in live]
        cos = vecs @ self._vecs[live].T
        probs = softmax(self.params.alpha * cos, 1.0)
        # the expert the query itself is closest to: shown beside the instruction's choice
        qcos = query_vecs @ self._vecs[live].T if query_vecs is not None else cos
        out = []
        for i in range(vecs.shape[0]):
            order = np.argsort(-probs[i])
            details: dict[str, Any] = {
                "instruction": instructions[i] if instructions is not None else None,
                "cosine": {names[int(j)]: round(float(cos[i, j]), 4) for j in order},
                "expert_instruction_source": {n: self.sources[n] for n in names},
            }
            if instructions is None or query_vecs is None:
                how = "no instruction LLM: the query itself is embedded"
            else:
                similarity = float(vecs[i] @ query_vecs[i])
                details["query_similarity"] = round(similarity, 4)
                details["query_closest"] = names[int(np.argmax(qcos[i]))]
                rejected = self._reject(instructions[i], similarity, details)
                if rejected is not None:
                    out.append(rejected)
                    continue
                how = f"instruction {instructions[i]!r}"
            candidates = tuple(
                Candidate(names[int(j)], round(float(probs[i, j]), 6)) for j in order
            )
            out.append(
                RouteDecision(
                    candidates=candidates,
                    router=self.name,
                    k=min(self.params.k, len(names)),
                    reason=f"{how}; closest expert instruction: {names[int(order[0])]}",
                    details=details,
                    estimates=tuple(Estimate(c.expert, c.score) for c in candidates),
                    probability=min(1.0, candidates[0].score),
                )
            )
        return out

    def _reject(
        self, instruction: str, similarity: float, details: dict[str, Any]
    ) -> RouteDecision | None:
        """The abstention for an instruction that does not describe its query, else None."""
        floor = self.params.min_query_similarity
        bad = similarity < floor
        self.record.add(bad)
        if not bad:
            return None
        reason = (
            f"instruction {instruction!r} is far from the query (cosine {similarity:.2f} < "
            f"min_query_similarity {floor:g}): the instruction writer "
            f"{self.params.instruction_expert!r} looks unreliable"
        )
        log.info("router %s abstains: %s", self.name, reason)
        return RouteDecision.abstain(self.name, reason, **details)
