"""A disk cache of sentence embeddings for offline evaluation, outside the repository.

Evaluations re-encode the same thousands of texts for every router and fold; this
encodes each text once per encoder and keeps the vectors under `COE_CACHE_DIR`, in one
folder per encoder identity so that different encoders never share vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coe.config import machine_settings
from coe.routing.encoders import EncoderCache


def cache_dir() -> Path:
    return machine_settings().cache_dir / "embeddings"


def encoder_identity(encoders: EncoderCache, spec: str | None = None) -> str:
    """What names the encoder's vectors (kind, model files, token limit): a rebuilt or
    different encoder never reads another's vectors."""
    return encoders.identity(spec)


def warm(encoders: EncoderCache, texts: Sequence[str], spec: str | None = None) -> None:
    """Make every text's vector available in `encoders`' memo, encoding only new ones.

    `spec` names the encoder `encoders` was built with (e.g. "minilm-int8"); None: its default.
    """
    tag = hashlib.sha1(encoder_identity(encoders, spec).encode()).hexdigest()[:10]
    folder = cache_dir() / tag
    folder.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    known: dict[str, np.ndarray] = {}
    for f in folder.glob("*.npz"):
        with np.load(f) as z:
            known.update(zip(z["keys"].tolist(), z["vecs"], strict=True))
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if todo:
        vecs = encoders.encode_sync([t for _, t in todo])
        new_keys = np.array([k for k, _ in todo])
        name = hashlib.sha1("".join(new_keys.tolist()).encode()).hexdigest()[:12]
        np.savez(folder / f"{name}.npz", keys=new_keys, vecs=vecs)
        known.update(zip(new_keys.tolist(), vecs, strict=True))
    encoders.preload(list(texts), np.stack([known[k] for k in keys]))
