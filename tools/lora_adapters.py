"""Random rank-r LoRA adapters of a base model: distinct, cheap test and benchmark experts.

Used by tests/pool/test_lora_real.py and bench/pool_service_bench.py; needs `peft` (the dev extra),
imported only when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def make_random_adapters(
    base: Path, out_dir: Path, names: Sequence[str], rank: int = 8, scale: float = 1.0
) -> dict[str, Path]:
    """One adapter folder per name on q_proj/v_proj, seeded by position, B non-zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out: dict[str, Path] = {}
    for seed, name in enumerate(names):
        path = out_dir / name
        if (path / "adapter_config.json").is_file():
            out[name] = path
            continue
        torch.manual_seed(1000 + seed)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        # init_lora_weights=False leaves B random (peft's default zeroes it: a no-op adapter).
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.mul_(scale)
        peft_model.save_pretrained(str(path))
        out[name] = path
    return out
