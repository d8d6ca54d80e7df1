"""What several experts per query cost: latency of k = 1, 2, 3 through the gateway, one run.

All experts are the same real vLLM server with different system prompts, so the numbers show
the fan-out and the aggregator call, not differences between models. k > 1 synthesises
(the aggregator call is forced unless --allow-skip). Order of k rotates per repetition.

    .venv/bin/python bench/aggregation_bench.py [--url http://127.0.0.1:8101] [--reps 5]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coe.config import Settings  # noqa: E402 - after the path set-up, for a bare checkout
from coe.experts.schema import CoeConfig  # noqa: E402
from coe.gateway import create_app  # noqa: E402
from tests.support.server import ServedApp  # noqa: E402

PROMPTS = {
    "generalist": None,
    "math-tutor": "You are a careful math tutor. Solve the problem step by step and state the "
    "final answer.",
    "concise": "You are a concise assistant. Answer with just the final answer, nothing else.",
}
QUESTIONS = [
    "What is 12 times 7?",
    "Name one thing people like to eat for breakfast.",
    "Why is the sky blue? Answer in one sentence.",
    "What is the capital of Italy?",
    "Give a synonym for 'happy'.",
]


def config(url: str, model: str, ks: list[int], allow_skip: bool) -> CoeConfig:
    experts = []
    for name, prompt in PROMPTS.items():
        spec: dict[str, Any] = {"name": name, "model": model, "endpoints": [url]}
        experts.append({**spec, "system_prompt": prompt} if prompt else spec)
    aggregation = {"aggregator": "generalist", "skip_if_agree": allow_skip, "deadline_s": 300}
    pipelines = {f"k{k}": {"routers": ["default"], "k": k, "aggregation": aggregation} for k in ks}
    return CoeConfig.model_validate(
        {
            "experts": experts,
            "default_expert": "generalist",
            "pipelines": pipelines,
            "default_pipeline": f"k{ks[0]}",
            "routers_dirs": [str(REPO / "routers")],
        }
    )


def one(client: httpx.Client, k: int, question: str, max_tokens: int) -> tuple[float, bool]:
    body = {
        "model": f"coe/k{k}",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    started = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    coe = r.json()["coe"]
    if k > 1 and len(coe.get("experts", [])) != k:
        raise RuntimeError(f"k={k}: only {coe.get('experts')} answered: {coe.get('failures')}")
    skipped = bool((coe.get("aggregation") or {}).get("skipped"))
    return elapsed * 1000, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8101", help="the vLLM expert")
    parser.add_argument("--model", default="smollm2", help="its served model name")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each question")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--ks", default="1,2,3")
    parser.add_argument(
        "--allow-skip", action="store_true", help="skip the aggregator on agreement"
    )
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    settings = Settings(admin_token=secrets.token_hex(16))  # a real token: no dev-mode notice
    server = ServedApp(create_app(settings, config(args.url, args.model, ks, args.allow_skip)))
    server.start()
    latencies: dict[int, list[float]] = {k: [] for k in ks}
    skips = dict.fromkeys(ks, 0)
    try:
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            for k in ks:  # warm up every path once
                one(client, k, "Say hello.", args.max_tokens)
            for rep in range(args.reps):
                for qi, question in enumerate(QUESTIONS):
                    shift = (rep + qi) % len(ks)
                    for k in ks[shift:] + ks[:shift]:
                        ms, skipped = one(client, k, question, args.max_tokens)
                        latencies[k].append(ms)
                        skips[k] += skipped
    finally:
        server.stop()

    base = statistics.median(latencies[ks[0]]), statistics.fmean(latencies[ks[0]])
    print(
        f"expert {args.url} ({args.model}), max_tokens={args.max_tokens}, "
        f"{args.reps} reps x {len(QUESTIONS)} questions per k"
    )
    header = ("k", "n", "p50 ms", "mean ms", "p50/k1", "mean/k1", "skipped")
    print("{:>3} {:>4} {:>9} {:>9} {:>7} {:>8} {:>8}".format(*header))
    for k in ks:
        p50, mean = statistics.median(latencies[k]), statistics.fmean(latencies[k])
        print(
            f"{k:>3} {len(latencies[k]):>4} {p50:>9.1f} {mean:>9.1f} "
            f"{p50 / base[0]:>7.2f} {mean / base[1]:>8.2f} {skips[k]:>8}"
        )


if __name__ == "__main__":
    main()
