#!/usr/bin/env bash
# The Ray batch engine's vLLM path on a GPU machine: a batch file routed by coe and
# generated in the job by Ray Data LLM's vLLM engine processor (one engine per base model,
# a LoRA expert as a per-row adapter when ADAPTER is given), then checked line by line.
#
# Needs, on the GPU machine: this checkout installed with its `ray` and `fast` extras, vLLM
# with CUDA, and `ray[data,llm]==2.60.0` (the rayproject/ray-llm image has both), and a
# local model folder (MODEL; default: the SmolLM2 folder `coe prepare-model` converts).
# Nothing is downloaded: a machine without them stops here with what is missing.
#
#   bash bench/gpu_ray_check.sh                 # 200 lines, SmolLM2 on one GPU
#   LINES=2000 MODEL=/models/llama-3-8b-instruct bash bench/gpu_ray_check.sh
#   ADAPTER=/models/lora/math bash bench/gpu_ray_check.sh   # the math expert as a LoRA
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python3)}
LINES=${LINES:-200}
MODEL=${MODEL:-$HOME/.cache/coe/models/smollm2-135m-instruct}
OUT=${OUT:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<'PY' || { echo "gpu_ray_check: missing prerequisites (see the header)"; exit 2; }
import importlib, sys
missing = [m for m in ("coe", "ray.data.llm", "vllm", "torch") if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    sys.exit(f"not importable: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible")
print("gpu:", torch.cuda.get_device_name(0))
PY
[ -f "$MODEL/config.json" ] || { echo "gpu_ray_check: no model folder at $MODEL"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PY" - "$OUT" "$LINES" "$MODEL" "${ADAPTER:-}" <<'PY'
import json, sys, time
from pathlib import Path
import yaml
out, lines, model, adapter = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
questions = [json.loads(x)["text"] for x in open("tests/data/shipped_requests.jsonl")]
experts = [
    {"name": n, "model": n, "endpoints": ["http://127.0.0.1:9"],  # never called: in-engine
     "system_prompt": p, "limits": {"max_tokens": 32}, "defaults": {"temperature": 0}}
    for n, p in (("generalist", None), ("math-tutor", "You are a careful math tutor."),
                 ("coder", "You are a concise Python programmer."))
]
routes = yaml.safe_load(open("experts.yaml"))["routers"]["topic"]
routes["params"]["threshold"] = 0.0
config = {
    "encoder": "minilm-int8",
    "experts": experts,
    "default_expert": "generalist",
    "routers": {"topic": routes},
    "pipelines": {"auto": {"routers": ["topic", "default"]},
                  "duo": {"routers": ["topic"], "k": 2, "aggregation": {"strategy": "vote"}}},
    "routers_dirs": [str(Path("routers").resolve())],
}
(out / "experts.yaml").write_text(yaml.safe_dump(config))
models = {e["name"]: {"model": model, "engine_kwargs": {"max_model_len": 2048}} for e in experts}
if adapter:
    models["math-tutor"]["adapter"] = adapter
(out / "models.yaml").write_text(yaml.safe_dump(models))
with open(out / "in.jsonl", "w") as fh:
    for i in range(lines):
        q = questions[i % len(questions)]
        fh.write(json.dumps({"custom_id": f"q{i}", "body": {
            "model": "coe/duo" if i % 10 == 0 else "coe/auto",
            "messages": [{"role": "user", "content": f"{q} ({i})"}]}}) + "\n")
PY

started=$(date +%s.%N)
"$PY" -m coe.cli batch run "$OUT/in.jsonl" -o "$OUT/out.jsonl" -c "$OUT/experts.yaml" \
  --engine ray --generate vllm --engine-models "$OUT/models.yaml" 2> "$OUT/stderr.log" \
  || { tail -50 "$OUT/stderr.log"; exit 1; }
ended=$(date +%s.%N)
tail -1 "$OUT/stderr.log"

"$PY" - "$OUT/out.jsonl" "$LINES" "$started" "$ended" <<'PY'
import collections, json, sys
path, lines, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(x) for x in open(path)]
assert [r["custom_id"] for r in rows] == [f"q{i}" for i in range(lines)], "lines missing or out of order"
ok = [r for r in rows if r["error"] is None]
bad = [r for r in rows if r["error"] is not None]
experts = collections.Counter(r["response"]["body"]["coe"]["expert"] for r in ok)
tokens = sum(r["response"]["body"].get("usage", {}).get("completion_tokens", 0) for r in ok)
empty = [r["custom_id"] for r in ok if not r["response"]["body"]["choices"][0]["message"]["content"].strip()]
print(f"lines {lines}: answered {len(ok)}, failed {len(bad)}, empty answers {len(empty)}")
print(f"by expert: {dict(experts)}; completion tokens {tokens}")
print(f"wall {t1 - t0:.1f} s, {lines / (t1 - t0):.1f} lines/s (Ray start, routing and engine load included)")
for r in bad[:5]:
    print("error:", r["custom_id"], r["error"])
sys.exit(0 if not bad and not empty else 1)
PY
