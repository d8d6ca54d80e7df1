"""Generation inside the job on GPU nodes: Ray Data LLM's vLLM engine processor, one per
base model, the models one after another, instead of HTTP calls to served experts.

Which experts are generated this way (`engine_models`): those a models map names
(expert → base model folder, an optional LoRA adapter folder, vLLM engine arguments,
replicas), and those served by one of the config's `local_servers` (its model folder).
Experts sharing a base model share one processor: their lines are sorted by adapter, and
each row names its adapter as `model` (vLLM's per-request LoRA). A row's request is the one
the expert would get over HTTP (`expert_request`: its system prompt, defaults, token cap),
and its answer is written as the HTTP path writes it (a chat completion, `coe` metadata).
An engine failure is the line's error line (no fallback down the ranked list: the other
experts are not here); k > 1 lines get their part, combined later like any other.

Needs GPUs and `ray[data,llm]` with vLLM on the nodes; `bench/gpu_ray_check.sh` runs it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from coe.batch.lines import LineId, answered, error_line
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.pipeline import Answer, expert_request
from coe.routing.decision import RouteDecision

if TYPE_CHECKING:
    import ray.data

WORKER = "ray-vllm-engine"
SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_p",
    "logprobs",
)


@dataclass(frozen=True)
class EngineModel:
    """How one expert is generated in the job: a base model (a folder every GPU node can
    read), optionally a LoRA adapter on it, and the engine's arguments and replicas."""

    source: str
    adapter: str | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1

    @classmethod
    def parse(cls, expert: str, raw: Mapping[str, Any] | str) -> EngineModel:
        if isinstance(raw, str):
            return cls(source=raw)
        unknown = set(raw) - {"model", "adapter", "engine_kwargs", "replicas"}
        if "model" not in raw or unknown:
            raise ConfigError(
                f"engine model of {expert}: expected model (a folder), and optionally "
                f"adapter, engine_kwargs, replicas; got {sorted(raw)}"
            )
        return cls(
            source=str(raw["model"]),
            adapter=str(raw["adapter"]) if raw.get("adapter") else None,
            engine_kwargs=dict(raw.get("engine_kwargs") or {}),
            replicas=int(raw.get("replicas", 1)),
        )


def engine_models(
    config: CoeConfig, given: Mapping[str, Mapping[str, Any] | str]
) -> dict[str, EngineModel]:
    """The experts to generate in the job, and how: `given` first, then any expert whose
    `model` a local server of the config serves (by that server's model folder)."""
    from coe.local.model import resolve_model

    names = {e.name for e in config.experts}
    if unknown := sorted(set(given) - names):
        raise ConfigError(f"engine models for unknown experts: {', '.join(unknown)}")
    out = {name: EngineModel.parse(name, raw) for name, raw in given.items()}
    served = {s.served_model_name: s for s in config.local_servers}
    for expert in config.experts:
        server = served.get(expert.model)
        if expert.name not in out and server is not None:
            out[expert.name] = EngineModel(source=str(resolve_model(server.model)))
    return out


def by_base_model(models: Mapping[str, EngineModel]) -> dict[str, list[str]]:
    """Experts grouped by the base model their processor loads (one processor each)."""
    groups: dict[str, list[str]] = {}
    for expert, model in sorted(models.items()):
        groups.setdefault(model.source, []).append(expert)
    return groups


def engine_row(
    row: dict[str, Any], experts: Mapping[str, ExpertSpec], models: Mapping[str, EngineModel]
) -> dict[str, Any]:
    """A line-and-expert row as the engine takes it: messages, sampling parameters, the
    adapter as `model` for a LoRA expert; the line's own columns ride along."""
    expert = str(row["expert"])
    body = expert_request(experts[expert], json.loads(row["body"]))
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        body["max_tokens"] = body["max_completion_tokens"]
    out = {
        "messages": body["messages"],
        "sampling_params": {k: body[k] for k in SAMPLING if body.get(k) is not None},
        **{k: row[k] for k in ("index", "custom_id", "body", "plan", "expert")},
    }
    adapter = models[expert].adapter
    if adapter:
        out["model"] = adapter
    return out


def completion(row: dict[str, Any], model: str) -> dict[str, Any]:
    """The engine's output for a row as an OpenAI chat completion."""
    generated = int(row.get("num_generated_tokens") or 0)
    prompt = int(row.get("num_input_tokens") or 0)
    cap = (row.get("sampling_params") or {}).get("max_tokens")
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": str(row.get("generated_text") or "")},
                "finish_reason": "length" if cap and generated >= int(cap) else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": generated,
            "total_tokens": prompt + generated,
        },
    }


def answered_row(
    row: dict[str, Any], job_id: str, experts: Mapping[str, ExpertSpec]
) -> dict[str, Any]:
    """An engine row back as the answer stage's row: a k = 1 line's result line, or a
    k > 1 line's part (the combine stage's input), failures included."""
    expert = str(row["expert"])
    decision = RouteDecision.from_dict(json.loads(row["plan"])["decision"])
    error = row.get("__inference_error__")
    out = {k: row[k] for k in ("index", "custom_id", "body", "plan", "expert")}
    out["part"], out["result"] = "", ""
    response = None if error else completion(row, experts[expert].model)
    line = LineId(job_id, int(row["index"]), str(row["custom_id"]))
    if decision.k > 1:
        record: dict[str, Any] = (
            {"status": "ok", "response": response, "latency_ms": 0.0}
            if response is not None
            else {"status": "failed", "error": f"{expert}: {error}", "code": 502, "latency_ms": 0.0}
        )
        out["part"] = json.dumps(record)
    elif response is not None:
        answer = Answer(expert=expert, response=response)
        out["result"] = json.dumps(answered(line, decision, answer, WORKER).result)
    else:
        message = f"expert {expert} failed in the engine: {error}"
        out["result"] = json.dumps(error_line(line, "upstream_error", message, 502).result)
    return out


def generate(
    pairs: ray.data.Dataset,
    group: list[str],
    experts: Mapping[str, ExpertSpec],
    models: Mapping[str, EngineModel],
    job_id: str,
    batch_size: int,
) -> ray.data.Dataset:
    """One base model's experts' rows through one vLLM engine processor, sorted by adapter
    so each adapter's rows run together."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    base = models[group[0]]
    adapters = {models[e].adapter for e in group if models[e].adapter}
    engine_kwargs: dict[str, Any] = {}
    if adapters:
        engine_kwargs = {"enable_lora": True, "max_loras": len(adapters), "max_lora_rank": 64}
    engine_kwargs.update(base.engine_kwargs)
    config = vLLMEngineProcessorConfig(
        model_source=base.source,
        engine_kwargs=engine_kwargs,
        concurrency=base.replicas,
        batch_size=batch_size,
        should_continue_on_error=True,
    )
    processor = build_processor(
        config,
        preprocess=partial(engine_row, experts=experts, models=models),
        postprocess=partial(answered_row, job_id=job_id, experts=experts),
    )
    from ray.data.expressions import col

    rows = pairs.filter(expr=col("expert").is_in(group))
    if adapters:
        rows = rows.map(lambda r: {**r, "adapter": models[r["expert"]].adapter or ""}).sort(
            "adapter"
        )
    return processor(rows)
