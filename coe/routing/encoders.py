"""Sentence encoders loaded once per process and shared by every router.

The encoder is its own axis (`coe.routing.encoder_backends`: sentence-transformers, int8
ONNX, static or a plug-in kind); nothing is ever downloaded. Encoding runs on one encoder
thread so the event loop keeps serving (a static encoder, microseconds a text, runs inline).
Concurrent requests are micro-batched: whatever is queued when the encoder thread frees up
goes into one model call (no added wait), and a full queue refuses at once (`RouterBusy`:
the pipeline's next router decides) instead of letting requests wait without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coe.errors import RouterBusy
from coe.routing.encoder_backends import Backend, EncoderKinds, EncoderSpec


@dataclass
class _Ask:
    key: EncoderSpec
    texts: list[str]
    future: asyncio.Future[np.ndarray]


@dataclass
class _Queue:
    """The asks of one event loop waiting for the encoder thread, and the task draining them."""

    loop: asyncio.AbstractEventLoop
    asks: list[_Ask]
    texts: int = 0
    drainer: asyncio.Task[None] | None = None


@dataclass
class _Shared:
    """What every `bound` view of one cache shares: loaded models, the encoder thread, the
    queue of asks and the recent-query LRU."""

    batch_size: int
    max_queue: int  # texts waiting for the encoder before asks are refused
    query_cache_size: int
    calls: int = 0
    cache_hits: int = 0
    queue: _Queue | None = None
    executor: ThreadPoolExecutor | None = None
    models: dict[EncoderSpec, Backend] = field(default_factory=dict)
    recent: OrderedDict[tuple[EncoderSpec, str], np.ndarray] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    kinds: EncoderKinds = field(default_factory=EncoderKinds.load)  # encoder-kind plug-ins


class EncoderCache:
    """Holds loaded encoders by spec; `encode` returns unit-norm float32 rows.

    `default` is the encoder routers get when they name none (experts.yaml `encoder:`).
    With `memo_size > 0` it also remembers vectors by text, which makes repeated offline
    evaluations (k-fold, parameter sweeps) encode each text once. Online, `encode` first
    looks in a bounded LRU of recent queries (`query_cache_size`), so a repeated query costs
    no encoder call.
    """

    def __init__(
        self,
        default: str | Path | EncoderSpec | None = None,
        batch_size: int = 64,
        memo_size: int = 0,
        max_queue: int = 512,
        query_cache_size: int = 0,
        shared: _Shared | None = None,
    ) -> None:
        self._shared = shared or _Shared(batch_size, max_queue, query_cache_size)
        self.default = self._shared.kinds.parse(default)
        self.memo_size = memo_size
        self._specs: dict[str | Path | EncoderSpec | None, EncoderSpec] = {}
        self._memo: dict[tuple[EncoderSpec, str], np.ndarray] = {}

    def bound(self, default: str | Path | EncoderSpec | None) -> EncoderCache:
        """This cache (same loaded models, thread, queue and query LRU) with another default
        encoder: each routing config gets its own, so a reload that changes `encoder:` never
        changes what the routers still serving encode with."""
        return EncoderCache(default, memo_size=self.memo_size, shared=self._shared)

    @property
    def calls(self) -> int:
        """Model calls made for `encode` (one per micro-batch and model)."""
        return self._shared.calls

    @property
    def cache_hits(self) -> int:
        return self._shared.cache_hits

    @property
    def batch_size(self) -> int:
        return self._shared.batch_size

    @property
    def max_queue(self) -> int:
        return self._shared.max_queue

    @max_queue.setter
    def max_queue(self, value: int) -> None:
        self._shared.max_queue = value

    @property
    def query_cache_size(self) -> int:
        return self._shared.query_cache_size

    def resolve(self, spec: str | Path | EncoderSpec | None = None) -> EncoderSpec:
        """The spec `spec` names (None: the default), remembered: parsing is per call."""
        found = self._specs.get(spec)
        if found is None:
            found = self._specs[spec] = self._shared.kinds.parse(spec, self.default)
        return found

    def identity(self, spec: str | Path | EncoderSpec | None = None) -> str:
        """A stable name for the vectors this encoder makes (disk caches key by it)."""
        s = self.resolve(spec)
        where = self._shared.kinds.located(s)
        weights = [where] if where.is_file() else sorted(where.glob("*.safetensors"))
        weights += [] if where.is_file() else sorted(where.glob("*.onnx"))
        stamp = ",".join(f"{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
        return f"{s.kind}:{where}:{s.max_tokens}:{stamp}"

    def model(self, spec: str | Path | EncoderSpec | None = None) -> Backend:
        """The loaded encoder for `spec` (loaded on first use, then shared)."""
        key = self.resolve(spec)
        shared = self._shared
        with shared.lock:
            if key not in shared.models:
                shared.models[key] = shared.kinds.backend(key, shared.batch_size)
            return shared.models[key]

    def dim(self, spec: str | Path | EncoderSpec | None = None) -> int:
        return self.model(spec).dim

    def encode_sync(
        self, texts: Sequence[str], spec: str | Path | EncoderSpec | None = None
    ) -> np.ndarray:
        """Unit-norm float32 vectors, one row per text (batched)."""
        key = self.resolve(spec)
        if not texts:
            return np.zeros((0, self.dim(key)), dtype=np.float32)
        if self.memo_size <= 0:
            return self._encode(key, list(texts))
        missing = [t for t in dict.fromkeys(texts) if (key, t) not in self._memo]
        if missing:
            vecs = self._encode(key, missing)
            if len(self._memo) + len(missing) > self.memo_size:
                self._memo = {k: v for k, v in self._memo.items() if k[1] in texts}
            for t, v in zip(missing, vecs, strict=True):
                self._memo[(key, t)] = v
        return np.stack([self._memo[(key, t)] for t in texts])

    def preload(
        self,
        texts: Sequence[str],
        vectors: np.ndarray,
        spec: str | Path | EncoderSpec | None = None,
    ) -> None:
        """Seed the memo with vectors computed earlier (e.g. an evaluation's disk cache)."""
        key = self.resolve(spec)
        self.memo_size = max(self.memo_size, len(self._memo) + len(texts))
        for t, v in zip(texts, vectors, strict=True):
            self._memo[(key, t)] = np.asarray(v, dtype=np.float32)

    def clear_memo(self) -> None:
        """Forget memoised and cached vectors and stop memoising (benchmarks must encode
        every query)."""
        self._memo.clear()
        self._shared.recent.clear()
        self.memo_size = 0

    async def encode(
        self, texts: Sequence[str], spec: str | Path | EncoderSpec | None = None
    ) -> np.ndarray:
        """Vectors for `texts`: recent queries from the LRU, the rest from the encoder.

        A static encoder (microseconds a text) runs right here on the event loop. Others run
        on the encoder thread, together with whatever else is queued when that thread frees
        up; `RouterBusy` at once when `max_queue` texts are already waiting (a lone ask of
        any size is always taken).

        One thread (not `asyncio.to_thread`'s pool): torch keeps a compute thread pool per
        calling thread, and hopping between threads costs ~5 ms per small query.
        """
        texts = list(texts)
        key = self.resolve(spec)
        cached = self._cached(key, texts) if self.query_cache_size > 0 else None
        if cached is not None:
            return cached
        backend = self._shared.models.get(key)
        if backend is not None and backend.inline and self.memo_size <= 0:
            self._shared.calls += 1
            vecs = backend.encode(texts)
        else:
            vecs = await self._queued(key, texts)
        if self.query_cache_size > 0:
            self._remember(key, texts, vecs)
        return vecs

    def _cached(self, key: EncoderSpec, texts: list[str]) -> np.ndarray | None:
        recent, rows = self._shared.recent, []
        for t in texts:
            v = recent.get((key, t))
            if v is None:
                return None
            recent.move_to_end((key, t))
            rows.append(v)
        self._shared.cache_hits += len(texts)
        return np.stack(rows) if rows else None

    def _remember(self, key: EncoderSpec, texts: list[str], vecs: np.ndarray) -> None:
        recent = self._shared.recent
        for t, v in zip(texts, vecs, strict=True):
            recent[(key, t)] = v
            recent.move_to_end((key, t))
        while len(recent) > self.query_cache_size:
            recent.popitem(last=False)

    async def _queued(self, key: EncoderSpec, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        queue = self._shared.queue
        if queue is None or queue.loop is not loop:  # a new event loop (tests): a new queue
            queue = self._shared.queue = _Queue(loop, [])
        if queue.texts and queue.texts + len(texts) > self.max_queue:
            raise RouterBusy(
                f"the encoder has {queue.texts} texts queued (COE_ENCODER_MAX_QUEUE="
                f"{self.max_queue}); routing by the next router"
            )
        ask = _Ask(key, texts, loop.create_future())
        queue.asks.append(ask)
        queue.texts += len(texts)
        if queue.drainer is None or queue.drainer.done():
            queue.drainer = loop.create_task(self._drain(queue), name="coe-encoder-queue")
        return await ask.future

    async def _drain(self, queue: _Queue) -> None:
        """Encode everything queued, a micro-batch per model, until the queue is empty."""
        while queue.asks:
            asks, queue.asks = queue.asks, []
            queue.texts -= sum(len(a.texts) for a in asks)
            by_model: dict[EncoderSpec, list[_Ask]] = {}
            for ask in asks:
                if not ask.future.done():  # its caller gave up (cancelled): nothing to do
                    by_model.setdefault(ask.key, []).append(ask)
            for key, group in by_model.items():
                batch = [t for a in group for t in a.texts]
                try:
                    vecs = await queue.loop.run_in_executor(
                        self._thread(), self.encode_sync, batch, key
                    )
                except Exception as err:  # the asks of this call fail, the queue goes on
                    for a in group:
                        if not a.future.done():
                            a.future.set_exception(err)
                    continue
                self._shared.calls += 1
                start = 0
                for a in group:
                    if not a.future.done():
                        a.future.set_result(vecs[start : start + len(a.texts)])
                    start += len(a.texts)

    def _thread(self) -> ThreadPoolExecutor:
        shared = self._shared
        with shared.lock:
            if shared.executor is None:
                shared.executor = ThreadPoolExecutor(1, thread_name_prefix="coe-encoder")
            return shared.executor

    def _encode(self, key: EncoderSpec, texts: list[str]) -> np.ndarray:
        backend = self.model(key)
        if backend.inline or threading.current_thread().name.startswith("coe-encoder"):
            return backend.encode(texts)
        # Model calls from any thread run on the encoder thread: two torch thread pools
        # spinning on 2 cores made single queries ~40% slower.
        return self._thread().submit(self._encode, key, texts).result()


def text_hash(text: str) -> str:
    """Stable key for caches of per-query LLM outputs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
