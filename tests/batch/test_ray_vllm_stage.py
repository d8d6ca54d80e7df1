"""The vLLM engine path of Ray batch jobs, in the parts that need no GPU: which experts are
generated in the job and from what, the rows the engine gets, and the lines its output
becomes (the engine itself runs in bench/gpu_ray_check.sh on a GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.ray_batch.vllm_stage import (
    EngineModel,
    answered_row,
    by_base_model,
    engine_models,
    engine_row,
)


def config(tmp: Path) -> CoeConfig:
    folder = tmp / "base"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return CoeConfig.model_validate(
        {
            "local_servers": [{"model": str(folder), "served_model_name": "base", "port": 8101}],
            "experts": [
                {"name": "general", "model": "base", "endpoints": ["http://127.0.0.1:8101"]},
                {
                    "name": "math",
                    "model": "math",
                    "endpoints": ["http://127.0.0.1:8102"],
                    "system_prompt": "You are a math tutor.",
                    "defaults": {"temperature": 0},
                    "limits": {"max_tokens": 16},
                },
                {"name": "remote", "model": "big", "endpoints": ["http://10.0.0.9:8000"]},
            ],
            "default_expert": "general",
        }
    )


def test_engine_models_from_local_servers_and_the_given_map(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    models = engine_models(cfg, {"math": {"model": str(tmp_path / "base"), "adapter": "/m/l"}})
    assert models["general"] == EngineModel(source=str(tmp_path / "base"))  # served locally
    assert models["math"].adapter == "/m/l"
    assert "remote" not in models  # no engine model: answered over HTTP
    assert by_base_model(models) == {str(tmp_path / "base"): ["general", "math"]}
    with pytest.raises(ConfigError, match="unknown experts: nobody"):
        engine_models(cfg, {"nobody": "/x"})
    with pytest.raises(ConfigError, match="expected model"):
        engine_models(cfg, {"math": {"adapter": "/m/l"}})


def row(expert: str, k: int = 1, **body: Any) -> dict[str, Any]:
    decision = {
        "candidates": [{"expert": "math", "score": 0.9}, {"expert": "general", "score": 0.5}],
        "router": "topic",
        "reason": "nearest label 'math'",
        "k": k,
    }
    request = {"model": "coe/auto", "messages": [{"role": "user", "content": "2+2?"}], **body}
    return {
        "index": 7,
        "custom_id": "q7",
        "body": json.dumps(request),
        "plan": json.dumps({"decision": decision, "pipeline": "auto", "expert": None}),
        "expert": expert,
    }


def test_engine_rows_are_the_request_the_expert_would_get(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    experts = {e.name: e for e in cfg.experts}
    models = {"math": EngineModel("/base", adapter="/lora/math"), "general": EngineModel("/base")}
    out = engine_row(row("math", max_tokens=100, top_p=0.5), experts, models)
    assert out["messages"][0] == {"role": "system", "content": "You are a math tutor."}
    assert out["sampling_params"] == {"temperature": 0, "top_p": 0.5, "max_tokens": 16}
    assert out["model"] == "/lora/math"  # the adapter, per row
    assert (out["index"], out["custom_id"], out["expert"]) == (7, "q7", "math")
    plain = engine_row(row("general", max_completion_tokens=5), experts, models)
    assert "model" not in plain and plain["sampling_params"] == {"max_tokens": 5}


def engine_output(source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        **source,
        "generated_text": "4",
        "num_generated_tokens": 1,
        "num_input_tokens": 9,
        "sampling_params": {"max_tokens": 16},
        **extra,
    }


def test_engine_output_becomes_the_lines_http_answers_make(tmp_path: Path) -> None:
    experts: dict[str, ExpertSpec] = {e.name: e for e in config(tmp_path).experts}
    done = answered_row(engine_output(row("math")), "batch_abc", experts)
    line = json.loads(done["result"])
    assert line["id"] == "batch_req_abc_7" and line["custom_id"] == "q7"
    body = line["response"]["body"]
    assert body["choices"][0]["message"]["content"] == "4"
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    assert body["model"] == "math" and body["coe"]["expert"] == "math"
    assert body["coe"]["decision"]["reason"] == "nearest label 'math'"
    assert done["part"] == ""

    part = answered_row(engine_output(row("math", k=2)), "batch_abc", experts)
    assert part["result"] == ""
    record = json.loads(part["part"])
    assert record["status"] == "ok" and record["response"]["choices"][0]["message"]["content"]

    failed = answered_row(
        engine_output(row("math"), __inference_error__="CUDA out of memory"), "batch_abc", experts
    )
    error = json.loads(failed["result"])
    assert error["response"]["status_code"] == 502
    assert "CUDA out of memory" in error["error"]["message"]
    failed_part = answered_row(
        engine_output(row("math", k=2), __inference_error__="boom"), "batch_abc", experts
    )
    assert json.loads(failed_part["part"])["status"] == "failed"


@pytest.mark.ray
def test_generate_vllm_without_engine_models_fails_before_any_work(
    tmp_path: Path, ray_local: None
) -> None:
    from coe.config import Settings
    from coe.ray_batch import RayOptions, run_on_ray

    cfg = config(tmp_path).model_copy(update={"local_servers": []})
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"custom_id": "a", "body": json.loads(row("math")["body"])}))
    with pytest.raises(ConfigError, match="no expert has an engine model"):
        run_on_ray(
            str(source),
            str(tmp_path / "out"),
            Settings(redis_url=None),
            cfg,
            RayOptions(generate="vllm"),
        )
    assert not (tmp_path / "out").exists()
