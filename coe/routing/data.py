"""Readers for the labelled routing data formats, and deterministic splits.

Formats: outcomes JSONL (`query`, `scores{model: 0..1}`, optional `task`), labelled
JSONL (`text`/`question`/`query` + `label`/`category`), and route CSV
(`utterance`, `expected_route`, empty = must abstain, `alternate_routes`, `split`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from coe.errors import ConfigError

TEXT_KEYS = ("text", "query", "question", "utterance", "prompt")
LABEL_KEYS = ("label", "category", "expected_route", "route", "task")
NO_ROUTE = {"", "none", "null", "abstain", "no_route", "fallback"}


@dataclass(frozen=True)
class OutcomeExample:
    id: str
    text: str
    scores: dict[str, float]
    task: str | None = None


@dataclass(frozen=True)
class LabelledExample:
    """`label` None means no route fits: a router should abstain."""

    id: str
    text: str
    label: str | None
    alternates: tuple[str, ...] = ()
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    cost: float
    description: str = ""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{n}: not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows


def _pick(row: dict[str, Any], keys: Sequence[str]) -> Any:
    return next((row[k] for k in keys if k in row), None)


def load_outcomes(path: str | Path) -> list[OutcomeExample]:
    """Queries with each model's measured score (the LLMRouter format)."""
    path = Path(path)
    out = []
    for n, row in enumerate(_read_jsonl(path), start=1):
        text, scores = _pick(row, TEXT_KEYS), row.get("scores")
        if not isinstance(text, str) or not isinstance(scores, dict) or not scores:
            raise ConfigError(f"{path}:{n}: an outcome line needs a query text and `scores`")
        out.append(
            OutcomeExample(
                id=str(row.get("id", n)),
                text=text,
                task=row.get("task"),
                scores={str(k): float(v) for k, v in scores.items()},
            )
        )
    return out


def load_labelled(path: str | Path, split: str | None = None) -> list[LabelledExample]:
    """Text + label examples from JSONL or the route CSV, optionally one `split` only."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        rows = _read_csv(path)
    else:
        rows = _read_jsonl(path)
    out = []
    for n, row in enumerate(rows, start=1):
        text, label = _pick(row, TEXT_KEYS), _pick(row, LABEL_KEYS)
        if not isinstance(text, str):
            raise ConfigError(f"{path}:{n}: no text field (one of {', '.join(TEXT_KEYS)})")
        if label is None and "scores" in row:
            scores = row["scores"]
            label = max(scores, key=scores.get) if scores else None
        lab = None if label is None or str(label).strip().lower() in NO_ROUTE else str(label)
        alts = tuple(a for a in str(row.get("alternate_routes") or "").split("|") if a)
        ex = LabelledExample(
            id=str(row.get("id", n)),
            text=text,
            label=lab,
            alternates=alts,
            split=row.get("split") or None,
            extra={k: v for k, v in row.items() if k in ("answer", "example_type", "speaker")},
        )
        if split is None or ex.split == split:
            out.append(ex)
    if not out:
        raise ConfigError(f"{path}: no examples" + (f" in split {split!r}" if split else ""))
    return out


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None


def load_models(path: str | Path) -> dict[str, ModelInfo]:
    """models.json: {name: {input_price, output_price, feature}}; cost = mean of the two prices."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read models file: {err}") from None
    out = {}
    for name, info in data.items():
        prices = [float(info.get(k, 0.0)) for k in ("input_price", "output_price")]
        out[name] = ModelInfo(name, sum(prices) / 2, str(info.get("feature", "")))
    return out


T = TypeVar("T", OutcomeExample, LabelledExample)


def _rank(item_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()


def split_by_id(
    items: Sequence[T], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[T], list[T]]:
    """A deterministic (train, test) split: the same ids land on the same side for a seed."""
    ordered = sorted(items, key=lambda x: _rank(x.id, seed))
    n_test = round(len(ordered) * test_fraction)
    test_ids = {x.id for x in ordered[:n_test]}
    return [x for x in items if x.id not in test_ids], [x for x in items if x.id in test_ids]


def kfold(items: Sequence[T], k: int = 5, seed: int = 0) -> list[tuple[list[T], list[T]]]:
    """k (train, test) pairs; every item is tested exactly once; folds fixed by id and seed."""
    if k < 2:
        raise ConfigError("k-fold needs k >= 2")
    ordered = sorted(items, key=lambda x: _rank(x.id, seed))
    fold_of = {x.id: i % k for i, x in enumerate(ordered)}
    return [
        ([x for x in items if fold_of[x.id] != f], [x for x in items if fold_of[x.id] == f])
        for f in range(k)
    ]


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
