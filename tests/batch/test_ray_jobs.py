"""Ray batch jobs end to end: `coe batch run --engine ray` on a folder of Parquet and JSONL
while an actor is killed mid-job, and a job answered by the real vLLM CPU expert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.ray_batch import RayOptions, run_on_ray
from coe.testing import FakeUpstream

pytestmark = [pytest.mark.ray, pytest.mark.embed]
REPO = Path(__file__).resolve().parents[2]
ROUTES = {
    "math-tutor": ["What is 17 times 23?", "Solve for x in 3x + 7 = 22."],
    "coder": ["Write a Python function that reverses a string.", "How do I read a CSV file?"],
    "generalist": ["What is the capital of France?", "Who wrote Hamlet?"],
}
QUESTIONS = {
    "m": "What is 6 times 7?",
    "c": "Write a Python function that adds two numbers.",
    "g": "What is the capital of Italy?",
}


def config(endpoint: dict[str, str], **expert: Any) -> dict[str, Any]:
    return {
        "encoder": "minilm-int8",
        "experts": [
            {"name": n, "model": n, "endpoints": [url], **expert} for n, url in endpoint.items()
        ],
        "default_expert": "generalist",
        "routers": {"topic": {"type": "embedding", "params": {"mode": "knn", "routes": ROUTES}}},
        "pipelines": {"auto": {"routers": ["topic", "default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }


def batch_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`coe batch run ARGS --engine ray` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "coe.cli", "batch", "run", *args, "--engine", "ray"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def body(question: str) -> dict[str, Any]:
    return {"model": "coe/auto", "messages": [{"role": "user", "content": question}]}


def test_cli_on_a_folder_of_parquet_and_jsonl_survives_a_killed_actor(
    tmp_path: Path, ray_local: None
) -> None:
    import ray

    servers = {n: FakeUpstream(n).start() for n in ROUTES}
    try:
        (tmp_path / "experts.yaml").write_text(
            yaml.safe_dump(config({n: s.base_url for n, s in servers.items()}))
        )
        inputs = tmp_path / "in"
        inputs.mkdir()
        rows = [
            {
                "custom_id": f"p{i}-{k}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": json.dumps(body(q)),
            }
            for i in range(10)
            for k, q in QUESTIONS.items()
        ]
        pq.write_table(pa.Table.from_pylist(rows), inputs / "a.parquet")
        jsonl = [
            json.dumps({"custom_id": f"j{i}-{k}", "body": body(q)})
            for i in range(10)
            for k, q in QUESTIONS.items()
        ]
        (inputs / "b.jsonl").write_text("\n".join(jsonl) + "\n\n")
        marker = tmp_path / "killed"
        env = {
            **os.environ,
            "COE_BATCH_FAULT": "run:answered:3",  # an answering actor dies at its 3rd answer
            "COE_BATCH_FAULT_ONCE": str(marker),  # once in the whole job
            "COE_LOG_LEVEL": "WARNING",
        }
        out = tmp_path / "out.jsonl"
        proc = batch_run(
            str(inputs),
            "-o",
            str(out),
            "--address",
            ray.get_runtime_context().gcs_address,
            "-c",
            str(tmp_path / "experts.yaml"),
            "--answer-actors",
            "1",
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert marker.exists(), "no actor was killed"
        summary = json.loads(proc.stderr.strip().splitlines()[-1])
        assert summary["request_counts"] == {"total": 60, "completed": 60, "failed": 0}
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        ids = [ln["custom_id"] for ln in lines]
        assert ids == [r["custom_id"] for r in rows] + [
            f"j{i}-{k}" for i in range(10) for k in QUESTIONS
        ]
        assert [ln["id"].rsplit("_", 1)[1] for ln in lines] == [str(i) for i in range(60)]
        experts = {ln["custom_id"]: ln["response"]["body"]["coe"]["expert"] for ln in lines}
        want = {"m": "math-tutor", "c": "coder", "g": "generalist"}
        assert all(experts[cid] == want[cid[-1]] for cid in experts), experts
    finally:
        for s in servers.values():
            s.stop()


def test_bad_input_as_a_whole_is_refused(tmp_path: Path, ray_local: None) -> None:
    (tmp_path / "experts.yaml").write_text(
        yaml.safe_dump(config({n: "http://127.0.0.1:9" for n in ROUTES}))
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\nnor this\n")
    proc = batch_run(
        str(bad), "-o", str(tmp_path / "o"), "--num-cpus", "1", "-c", str(tmp_path / "experts.yaml")
    )
    assert proc.returncode == 1
    assert "not JSONL" in proc.stderr


@pytest.mark.vllm
def test_a_job_answered_by_the_real_vllm_expert(
    tmp_path: Path, ray_local: None, vllm_expert: Any
) -> None:
    cfg = config(
        {n: vllm_expert.base_url for n in ROUTES},
        model=vllm_expert.model,
        limits={"max_tokens": 12},
        defaults={"temperature": 0},
    )
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(json.dumps({"custom_id": k, "body": body(q)}) for k, q in QUESTIONS.items())
    )
    summary = run_on_ray(
        str(source),
        str(tmp_path / "out.jsonl"),
        Settings(redis_url=None),
        CoeConfig.model_validate(cfg),
        RayOptions(route_actors=1, answer_actors=1),
    )
    assert summary.to_dict()["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    lines = {
        json.loads(x)["custom_id"]: json.loads(x)
        for x in (tmp_path / "out.jsonl").read_text().splitlines()
    }
    want = {"m": "math-tutor", "c": "coder", "g": "generalist"}
    for cid, line in lines.items():
        answer = line["response"]["body"]
        assert answer["coe"]["expert"] == want[cid]
        assert answer["choices"][0]["message"]["content"].strip()
        assert 0 < answer["usage"]["completion_tokens"] <= 12
