"""The `pools` section of experts.yaml: experts that share a device, C of them resident at once.

Kept apart from `coe.experts.schema` (which imports it) so the pool package owns its knobs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ControllerName = Literal["static", "process", "lora", "sleep"]


class PoolSpec(BaseModel):
    """One pool: who swaps experts in and out, how many fit, how long a request may wait."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controller: ControllerName = "static"
    capacity: int = Field(1, ge=1, le=256, description="experts resident at once (C)")
    max_wait_s: float = Field(
        30.0, gt=0, le=3600, description="waiting longer than this forces a swap (no starvation)"
    )
    retry_after_s: float = Field(
        30.0, ge=0, le=3600, description="an expert whose swap failed is skipped this long"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="controller parameters (docs/pools.md)"
    )


class ProcessServerSpec(BaseModel):
    """A vLLM server the `process` controller starts for one expert when it is swapped in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("builtin:smollm2-135m-instruct", description="builtin:NAME or a folder")
    served_model_name: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    cpu_core: int | None = Field(None, ge=0)
    args: list[str] = Field(default_factory=list)
    start_timeout_s: float = Field(300.0, gt=0)


class ProcessParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: dict[str, ProcessServerSpec] = Field(description="expert name -> its server")


class LoraParams(BaseModel):
    """Experts that are LoRA adapters of one base model, loaded at run time into one server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(min_length=1, description="the vLLM server started with --enable-lora")
    max_loras: int = Field(ge=1, description="the server's --max-loras: at most this resident")
    adapters: dict[str, str] = Field(description="expert name -> adapter folder on the server")


class SleepParams(BaseModel):
    """Each expert's own vLLM server (GPU, --enable-sleep-mode, VLLM_SERVER_DEV_MODE=1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: dict[str, str] = Field(
        default_factory=dict, description="expert name -> base URL (default: its endpoint)"
    )
    level: Literal[1, 2] = 1
