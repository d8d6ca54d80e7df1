#!/usr/bin/env bash
# Sleep/wake swaps under the pool service on a real GPU, in one run (about 3 to 6 minutes);
# bench/gpu_pool_check.py says what it does, what it needs and its settings (environment).
#
#   bash bench/gpu_pool_check.sh                 # from anywhere, on a machine with an NVIDIA GPU
#   CPU_SMOKE=1 bash bench/gpu_pool_check.sh     # the same plumbing on vLLM CPU servers behind a
#                                                # `static` pool (no swaps: CPU vLLM cannot sleep)
#
# The python: PYTHON, else .venv/bin/python with CPU_SMOKE=1, else python3.
# Exit status: 0 pass, 1 fail (the verdict says why), 2 cannot run here (no vLLM, GPU or model).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif [[ ${CPU_SMOKE:-0} == 1 && -x $REPO/.venv/bin/python ]]; then
    PY=$REPO/.venv/bin/python
else
    PY=python3
fi
command -v "$PY" >/dev/null || { echo "CANNOT RUN: no python interpreter '$PY' (set PYTHON)"; exit 2; }
export PYTHON=$PY PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
exec "$PY" -m bench.gpu_pool_check "$@"
