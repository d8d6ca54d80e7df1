"""The Ray batch engine's vLLM path on a GPU machine: a batch file routed by coe and generated
in the job by Ray Data LLM's vLLM engine processor (one engine per base model, a LoRA expert as
a per-row adapter when ADAPTER is given), then checked line by line.

Needs, on the GPU machine: this checkout installed with its `ray` and `fast` extras, vLLM with
CUDA, and `ray[data,llm]==2.60.0` (the rayproject/ray-llm image has both), and a local model
folder (MODEL; default: the SmolLM2 folder `coe prepare-model` converts). Nothing is
downloaded: a machine without them stops with what is missing (exit 2).

    bash bench/gpu_ray_check.sh                 # 200 lines, SmolLM2 on one GPU
    LINES=2000 MODEL=/models/llama-3-8b-instruct bash bench/gpu_ray_check.sh
    ADAPTER=/models/lora/math bash bench/gpu_ray_check.sh   # the math expert as a LoRA
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("coe", "ray.data.llm", "vllm", "torch")
CANNOT_RUN = 2


class CannotRun(Exception):
    """A prerequisite is missing: the check cannot run on this machine."""


@dataclass(frozen=True)
class Plan:
    out: Path
    lines: int
    model: Path
    adapter: str


def check_modules_and_gpu() -> str:
    """The GPU's name; CannotRun naming the modules that do not import, or the missing GPU."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise CannotRun(f"not importable: {', '.join(missing)}")
    import torch

    if not torch.cuda.is_available():
        raise CannotRun("no CUDA device visible")
    return str(torch.cuda.get_device_name(0))


def check_prerequisites(model: Path) -> str | None:
    """None when the check can run here, else the line that says what is missing."""
    try:
        print("gpu:", check_modules_and_gpu())
    except CannotRun as err:
        print(err, file=sys.stderr)
        return "gpu_ray_check: missing prerequisites (see the header)"
    if not (model / "config.json").is_file():
        return f"gpu_ray_check: no model folder at {model}"
    return None


def write_inputs(plan: Plan) -> None:
    """experts.yaml (three experts, in-engine), models.yaml and the batch file."""
    import yaml

    shipped = (REPO / "tests/data/shipped_requests.jsonl").read_text().splitlines()
    questions = [json.loads(x)["text"] for x in shipped]
    experts: list[dict[str, Any]] = [
        {
            "name": n,
            "model": n,
            "endpoints": ["http://127.0.0.1:9"],  # never called: in-engine
            "system_prompt": p,
            "limits": {"max_tokens": 32},
            "defaults": {"temperature": 0},
        }
        for n, p in (
            ("generalist", None),
            ("math-tutor", "You are a careful math tutor."),
            ("coder", "You are a concise Python programmer."),
        )
    ]
    routes = yaml.safe_load((REPO / "experts.yaml").read_text())["routers"]["topic"]
    routes["params"]["threshold"] = 0.0
    config = {
        "encoder": "minilm-int8",
        "experts": experts,
        "default_expert": "generalist",
        "routers": {"topic": routes},
        "pipelines": {
            "auto": {"routers": ["topic", "default"]},
            "duo": {"routers": ["topic"], "k": 2, "aggregation": {"strategy": "vote"}},
        },
        "routers_dirs": [str((REPO / "routers").resolve())],
    }
    (plan.out / "experts.yaml").write_text(yaml.safe_dump(config))
    models: dict[str, dict[str, Any]] = {
        e["name"]: {"model": str(plan.model), "engine_kwargs": {"max_model_len": 2048}}
        for e in experts
    }
    if plan.adapter:
        models["math-tutor"]["adapter"] = plan.adapter
    (plan.out / "models.yaml").write_text(yaml.safe_dump(models))
    with open(plan.out / "in.jsonl", "w") as fh:
        for i in range(plan.lines):
            q = questions[i % len(questions)]
            body = {
                "model": "coe/duo" if i % 10 == 0 else "coe/auto",
                "messages": [{"role": "user", "content": f"{q} ({i})"}],
            }
            fh.write(json.dumps({"custom_id": f"q{i}", "body": body}) + "\n")


def run_batch(plan: Plan, python: str) -> float:
    """`coe batch run --engine ray --generate vllm` on the batch file; its wall seconds."""
    stderr_log = plan.out / "stderr.log"
    started = time.monotonic()
    with open(stderr_log, "w") as err:
        done = subprocess.run(
            [
                python,
                "-m",
                "coe.cli",
                "batch",
                "run",
                str(plan.out / "in.jsonl"),
                "-o",
                str(plan.out / "out.jsonl"),
                "-c",
                str(plan.out / "experts.yaml"),
                "--engine",
                "ray",
                "--generate",
                "vllm",
                "--engine-models",
                str(plan.out / "models.yaml"),
            ],
            cwd=REPO,
            stderr=err,
            check=False,
        )
    seconds = time.monotonic() - started
    tail = stderr_log.read_text(errors="replace").splitlines()
    if done.returncode != 0:
        print("\n".join(tail[-50:]))
        raise SystemExit(1)
    if tail:
        print(tail[-1])
    return seconds


def verify(path: Path, lines: int, seconds: float) -> bool:
    """Every line once and in order, answered and not empty; prints the summary."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    order = [r["custom_id"] for r in rows]
    assert order == [f"q{i}" for i in range(lines)], "lines missing or out of order"
    ok = [r for r in rows if r["error"] is None]
    bad = [r for r in rows if r["error"] is not None]
    experts = collections.Counter(r["response"]["body"]["coe"]["expert"] for r in ok)
    tokens = sum(r["response"]["body"].get("usage", {}).get("completion_tokens", 0) for r in ok)
    empty = [
        r["custom_id"]
        for r in ok
        if not r["response"]["body"]["choices"][0]["message"]["content"].strip()
    ]
    print(f"lines {lines}: answered {len(ok)}, failed {len(bad)}, empty answers {len(empty)}")
    print(f"by expert: {dict(experts)}; completion tokens {tokens}")
    print(
        f"wall {seconds:.1f} s, {lines / seconds:.1f} lines/s "
        "(Ray start, routing and engine load included)"
    )
    for r in bad[:5]:
        print("error:", r["custom_id"], r["error"])
    return not bad and not empty


def parse(argv: list[str] | None) -> tuple[Plan, str]:
    env = os.environ
    default_model = Path.home() / ".cache/coe/models/smollm2-135m-instruct"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=int(env.get("LINES", "200")))
    ap.add_argument("--model", type=Path, default=Path(env.get("MODEL", str(default_model))))
    ap.add_argument("--out", type=Path, default=Path(env["OUT"]) if env.get("OUT") else None)
    ap.add_argument("--adapter", default=env.get("ADAPTER", ""))
    ap.add_argument("--python", default=env.get("PY") or sys.executable)
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp())
    return Plan(out, args.lines, args.model, args.adapter), args.python


def main(argv: list[str] | None = None) -> int:
    plan, python = parse(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    missing = check_prerequisites(plan.model)
    if missing is not None:
        print(missing)
        return CANNOT_RUN
    subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        check=False,
    )
    write_inputs(plan)
    seconds = run_batch(plan, python)
    return 0 if verify(plan.out / "out.jsonl", plan.lines, seconds) else 1


if __name__ == "__main__":
    sys.exit(main())
