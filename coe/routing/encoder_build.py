"""Build a static (model2vec) routing encoder from the local MiniLM, once, outside the repo.

Distillation runs every token of MiniLM's vocabulary through the model, reduces the
vectors with PCA and weights them by token frequency (model2vec's `distill`); about a
minute on two cores. The folder is written next to its final place and renamed into it,
under a file lock, so concurrent first runs build it once and nobody reads half a model.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

from coe.errors import ConfigError
from coe.routing.encoder_backends import STATIC_PCA_DIMS, default_static_path, minilm_folder

log = logging.getLogger(__name__)


def static_ready(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def build_static(
    out: Path | None = None,
    source: Path | None = None,
    pca_dims: int = STATIC_PCA_DIMS,
    force: bool = False,
) -> Path:
    """Distil `source` (default: the packaged MiniLM) into a static encoder at `out`
    (default: the cache folder the `minilm-static` encoder loads). Returns the folder."""
    out = (out or default_static_path(pca_dims)).expanduser()
    source = source or minilm_folder()
    if static_ready(out) and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first; then we see it
        if static_ready(out) and not force:
            return out
        try:
            from model2vec.distill import distill
        except ImportError:
            raise ConfigError(
                "building a static encoder needs model2vec's distill extra "
                "(pip install 'coe[distill]')"
            ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        started = time.monotonic()
        log.info("distilling a static encoder from %s (pca_dims=%d)", source, pca_dims)
        model = distill(model_name=str(source), pca_dims=pca_dims)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        if not static_ready(tmp):
            raise ConfigError(f"model2vec wrote no model.safetensors/tokenizer.json in {tmp}")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        log.info("static encoder written to %s in %.0f s", out, time.monotonic() - started)
    return out
