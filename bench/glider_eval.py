"""How well the shipped GLIDER pipeline routes with its real instruction writer, against the
topic router: `python bench/glider_eval.py [--requests FILE] [--url URL] [--dump FILE]`.

Starts the local vLLM CPU server that experts.yaml describes (SmolLM2-135M, on a free port;
`--url` reuses one already serving `smollm2`), builds the engine from experts.yaml with every
expert pointed at it, and routes each labelled request (default
tests/data/shipped_requests.jsonl) through:

- `auto` (topic, then fallback), the reference;
- `glider` as shipped (the writer checks at their defaults);
- `glider_unchecked`: the same router with the checks off (the router before they existed);
- `glider_topic`: glider, then topic, then fallback (glider abstaining hands over to topic).

One line per pipeline: accuracy of the final expert, the share of requests its first router
abstained on, that router's accuracy on the requests it answered, and the writer calls made.
Each request's instruction is written once (the store caches it) and shared by the glider
pipelines. `--dump` writes every request's instruction, similarity and decisions as JSONL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coe.dispatch import ExpertClient  # noqa: E402 - after the path set-up, for a bare checkout
from coe.experts.registry import ExpertRegistry  # noqa: E402
from coe.experts.schema import CoeConfig, parse_config  # noqa: E402
from coe.local.model import cache_dir  # noqa: E402
from coe.local.vllm_server import VllmServer  # noqa: E402
from coe.pipeline import Engine, Target, build_engine  # noqa: E402
from coe.routing.data import load_labelled  # noqa: E402
from coe.routing.encoders import EncoderCache  # noqa: E402
from coe.store.embedded import EmbeddedStore  # noqa: E402

# glider_unchecked first: it asks the writer for every request, and the others reuse the cache
PIPELINES = ("auto", "glider_unchecked", "glider", "glider_topic")
UNCHECKED = {"min_query_similarity": -1.0, "pause_rejected_fraction": 1.01}


def bench_config(config_path: Path, url: str, model: str) -> CoeConfig:
    """experts.yaml with every expert on `url`, plus the comparison pipelines (each with a
    router of its own, so one pipeline's writer record does not steer another's)."""
    data: dict[str, Any] = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data.pop("local_servers", None)
    for expert in data["experts"]:
        expert["endpoints"], expert["model"] = [url], model
    glider = data["routers"]["glider"]
    params = glider.get("params", {})
    routers = data["routers"]
    routers["glider_unchecked"] = {"type": glider["type"], "params": {**params, **UNCHECKED}}
    routers["glider_then_topic"] = {"type": glider["type"], "params": dict(params)}
    data["pipelines"]["glider_unchecked"] = {"routers": ["glider_unchecked", "fallback"]}
    data["pipelines"]["glider_topic"] = {"routers": ["glider_then_topic", "topic", "fallback"]}
    return parse_config(data, config_path)


def local_server(config_path: Path, model: str) -> VllmServer:
    """The local server experts.yaml describes for `model`, moved to a free port."""
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    spec = next(
        s for s in parse_config(data, config_path).local_servers if s.served_model_name == model
    )
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return replace(VllmServer.of(spec), port=free_port(), log_path=logs / "glider-eval.log")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def evaluate(
    engine: Engine, requests: list[tuple[str, str]], calls: list[float]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    summary: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = [{"text": t, "label": lab} for t, lab in requests]
    for name in PIPELINES:
        first = engine.pipelines[name].routers[0]
        right = answered = answered_right = 0
        before, started = len(calls), time.monotonic()
        for row, (text, label) in zip(rows, requests, strict=True):
            d = await engine.decide(Target(pipeline=name), text)
            ok = d.chosen[0] == label
            right += ok
            if d.router == first:
                answered += 1
                answered_right += ok
            row[name] = {
                "expert": d.chosen[0],
                "router": d.router,
                "abstained": d.details.get("abstained"),
                "instruction": d.details.get("instruction"),
                "query_similarity": d.details.get("query_similarity"),
            }
        n = len(requests)
        summary[name] = {
            "accuracy": round(right / n, 3),
            "first_router": first,
            "abstain_rate": round(1 - answered / n, 3),
            "answered_accuracy": round(answered_right / answered, 3) if answered else None,
            "writer_calls": len(calls) - before,
            "seconds": round(time.monotonic() - started, 1),
        }
    return summary, rows


async def run(
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    requests = [(e.text, e.label or "") for e in load_labelled(args.requests)]
    config = bench_config(args.config, args.url, args.model)
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    calls: list[float] = []

    async def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            calls.append(time.monotonic())

    async with httpx.AsyncClient(timeout=300, event_hooks={"request": [count]}) as http:
        engine = await build_engine(
            config, registry, ExpertClient(http), store, args.config.parent, encoders=EncoderCache()
        )
        return await evaluate(engine, requests, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=Path, default=REPO / "tests" / "data" / "shipped_requests.jsonl"
    )
    parser.add_argument("--config", type=Path, default=REPO / "experts.yaml")
    parser.add_argument("--url", help="a vLLM server already serving the local model")
    parser.add_argument("--model", default="smollm2", help="its served model name")
    parser.add_argument("--dump", type=Path, help="write every request's decisions here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    server: VllmServer | None = None
    if args.url is None:
        server = local_server(args.config, args.model)
        server.start()
        waited = asyncio.run(server.wait_healthy())
        print(f"vLLM {args.model} healthy after {waited:.0f} s", file=sys.stderr)
        args.url = server.base_url
    try:
        summary, rows = asyncio.run(run(args))
    finally:
        if server is not None:
            server.stop()
    if args.dump:
        args.dump.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"{len(load_labelled(args.requests))} requests from {args.requests.name}")
    for name, s in summary.items():
        answered = "-" if s["answered_accuracy"] is None else f"{s['answered_accuracy']:.3f}"
        print(
            f"{name:17s} accuracy {s['accuracy']:.3f}  {s['first_router']} abstained "
            f"{s['abstain_rate']:.3f}  accuracy when it answered {answered}  "
            f"writer calls {s['writer_calls']}  {s['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
