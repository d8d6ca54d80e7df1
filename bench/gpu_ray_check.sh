#!/usr/bin/env bash
# The Ray batch engine's vLLM path on a GPU machine (bench/gpu_ray_check.py says what it needs
# and checks). Settings (environment): PY (the python to run it with), LINES, MODEL, OUT, ADAPTER.
# Exit status: 0 pass, 1 fail, 2 cannot run here (missing modules, no GPU or no model folder).
#
#   bash bench/gpu_ray_check.sh                 # 200 lines, SmolLM2 on one GPU
#   LINES=2000 MODEL=/models/llama-3-8b-instruct bash bench/gpu_ray_check.sh
#   ADAPTER=/models/lora/math bash bench/gpu_ray_check.sh   # the math expert as a LoRA
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python3)}
export PY
exec "$PY" -m bench.gpu_ray_check "$@"
