"""`--engine ray`: the Ray engine as a batch engine, its command-line options, and what it
hands its actors (this process's coe settings and offline-model switches)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from coe.batch.engines import BatchEngine, EngineOptions
from coe.config import Settings
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig


class RayCliOptions(EngineOptions):
    address: str | None = Field(
        None, description="the cluster (ray://head:10001 or auto); default local Ray"
    )
    num_cpus: int | None = Field(None, description="CPUs of a local Ray")
    route_actors: int = Field(2, description="routing actors (max)")
    answer_actors: int = Field(2, description="actors per expert group")
    in_flight: int = Field(16, description="requests per actor")
    experts_at_once: int = Field(
        1,
        description="expert groups answered together (1: one after another, each model "
        "loaded once)",
    )
    max_retries: int = Field(3, description="restarts of a dead actor")
    generate: Literal["http", "vllm"] = Field(
        "http",
        description="http calls the experts' endpoints; vllm generates experts that have an "
        "engine model in the job with Ray Data LLM's vLLM engine on GPU nodes",
    )
    engine_models: Path | None = Field(
        None,
        description="ray, --generate vllm: YAML of expert: {model: FOLDER, adapter: FOLDER, "
        "engine_kwargs: {...}, replicas: N} (experts served by local_servers need none)",
    )


class RayEngine(BatchEngine[RayCliOptions]):
    name = "ray"
    summary = "a Ray cluster (Ray Data)"
    Options = RayCliOptions

    def run(
        self,
        inputs: Sequence[str],
        output: str,
        settings: Settings,
        config: CoeConfig | None,
        options: RayCliOptions,
    ) -> dict[str, Any]:
        given = options.model_dump()
        source = given.pop("engine_models")
        models = yaml.safe_load(source.read_text()) if source else {}
        if not isinstance(models, dict):
            raise ConfigError(f"{source}: expected a mapping of expert names")
        try:
            import ray  # noqa: F401 - only to say what is missing
        except ImportError as err:
            raise ConfigError(
                f"--engine ray needs the ray extra (pip install 'coe[ray]'): {err}"
            ) from None
        from coe.experts.schema import load_config
        from coe.ray_batch import RayOptions, run_on_ray

        # the actors see this process's coe settings (and offline-model switches)
        env = {k: v for k, v in os.environ.items() if k.startswith(("COE_", "HF_", "TOKENIZERS_"))}
        ray_options = RayOptions(env=env, engine_models=models, **given)
        config = config or load_config(Path(settings.experts_file))
        return run_on_ray(list(inputs), output, settings, config, ray_options).to_dict()
