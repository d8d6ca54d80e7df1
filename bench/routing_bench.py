"""Embedding routing speed on this CPU: `python bench/routing_bench.py` prints one JSON line.

Targets (docs/routing-eval.md): p50 <= 5 ms for one query, >= 500 queries/s batched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO))
    from coe.eval.bench import run_bench

    data = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
    print(json.dumps(run_bench(data)))


if __name__ == "__main__":
    main()
