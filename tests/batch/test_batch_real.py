"""A batch job with real routing (real embeddings) answered by a real vLLM CPU expert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .test_batch_jobs import Deployment, jsonl

pytestmark = [pytest.mark.vllm, pytest.mark.embed, pytest.mark.redis]
REPO = Path(__file__).resolve().parents[2]


def test_real_routing_and_real_experts(tmp_path: Path, vllm_expert: Any) -> None:
    def expert(name: str, prompt: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": vllm_expert.model,
            "endpoints": [vllm_expert.base_url],
            "system_prompt": prompt,
            "limits": {"max_tokens": 12},
            "defaults": {"temperature": 0},
        }

    config = {
        "experts": [
            expert("generalist", "You are a helpful assistant."),
            expert("math-tutor", "You are a careful math tutor."),
            expert("coder", "You are a concise Python programmer."),
        ],
        "default_expert": "generalist",
        "routers": {
            "topic": {
                "type": "embedding",
                "params": {
                    "mode": "knn",
                    "k": 2,
                    "routes": {
                        "math-tutor": [
                            "What is 17 times 23?",
                            "Solve for x in 3x + 7 = 22.",
                            "What is the area of a circle with radius 4?",
                        ],
                        "coder": [
                            "Write a Python function that reverses a string.",
                            "How do I read a CSV file in Python?",
                            "Write a function that checks whether a number is prime.",
                        ],
                        "generalist": [
                            "What is the capital of France?",
                            "Who wrote Hamlet?",
                            "Recommend a book for the weekend.",
                        ],
                    },
                },
            },
        },
        "pipelines": {"auto": {"routers": ["topic", "default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }
    d = Deployment(tmp_path, config, chunk=2)
    try:
        d.start_worker("w1")
        questions = {
            "m1": "What is 6 times 7?",
            "m2": "Solve 2x = 10 for x.",
            "c1": "Write a Python function that adds two numbers.",
            "g1": "What is the capital of Italy?",
        }
        lines = [
            {
                "custom_id": cid,
                "body": {"model": "coe/auto", "messages": [{"role": "user", "content": q}]},
            }
            for cid, q in questions.items()
        ]
        job = d.wait(d.submit(jsonl(lines))["id"], timeout_s=300)
        downloaded = d.results(job["id"])
        assert sorted(r["custom_id"] for r in downloaded) == sorted(questions), downloaded
        results = {r["custom_id"]: r for r in downloaded}
        assert all(r["error"] is None for r in downloaded), downloaded
        experts = {cid: r["response"]["body"]["coe"]["expert"] for cid, r in results.items()}
        assert experts == {
            "m1": "math-tutor",
            "m2": "math-tutor",
            "c1": "coder",
            "g1": "generalist",
        }
        for r in results.values():
            body = r["response"]["body"]
            assert body["coe"]["router"] == "topic"
            assert body["choices"][0]["message"]["content"].strip()
            assert 0 < body["usage"]["completion_tokens"] <= 12
        print(json.dumps(experts))
    finally:
        d.close()
