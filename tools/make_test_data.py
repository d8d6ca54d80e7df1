"""Cut the small data slices under tests/data/ from the shared routing data sets.

The test suite trains and checks routers on these slices, so it runs on a fresh clone
with nothing beside it; full-size evaluations read the shared files from the command line.
Re-running this script reproduces the slices byte for byte (rows are kept in file order).

    python tools/make_test_data.py --source ../shared/data --out tests/data
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

OUTCOMES_PER_TASK = 40  # LLMRouter: the first 40 short queries of each task
OUTCOMES_MAX_CHARS = 600  # short queries keep the encoder fast
QUESTIONS_PER_CATEGORY = 14  # MMLU-Pro: 10 to train on, 4 to test, per category


def first_per_group(
    src: Path, dst: Path, group: Callable[[dict[str, Any]], str | None], limit: int
) -> int:
    """Copy the first `limit` lines of each group (lines whose `group` is None are skipped)."""
    seen: dict[str, int] = {}
    kept = []
    for line in src.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        key = group(json.loads(line))
        if key is None or seen.get(key, 0) >= limit:
            continue
        seen[key] = seen.get(key, 0) + 1
        kept.append(line + "\n")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(kept), encoding="utf-8")
    return len(kept)


def short_query_task(row: dict[str, Any]) -> str | None:
    return str(row.get("task") or "") if len(row["query"]) < OUTCOMES_MAX_CHARS else None


def make(source: Path, out: Path) -> dict[str, int]:
    counts = {
        "llmrouter/train.jsonl": first_per_group(
            source / "llmrouter" / "train.jsonl",
            out / "llmrouter" / "train.jsonl",
            short_query_task,
            OUTCOMES_PER_TASK,
        ),
        "mmlu_pro/validation.jsonl": first_per_group(
            source / "mmlu_pro" / "validation.jsonl",
            out / "mmlu_pro" / "validation.jsonl",
            lambda row: str(row["category"]),
            QUESTIONS_PER_CATEGORY,
        ),
    }
    for name in ("llmrouter/models.json", "healthcare_routes/evaluation.csv"):  # small: whole
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, out / name)
        counts[name] = len((out / name).read_text(encoding="utf-8").splitlines())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    args = parser.parse_args()
    for name, n in make(args.source, args.out).items():
        print(f"{args.out / name}: {n} lines")


if __name__ == "__main__":
    main()
