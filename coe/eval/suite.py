"""The evaluation suite behind docs/routing-eval.md: encoders by spec, and nested-CV runs
of the LLMRouter and MMLU-Pro presets that both the report and its per-encoder table use.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coe.errors import CoeError
from coe.eval import categories, outcomes
from coe.eval.embcache import warm
from coe.eval.extra import dedupe, load_mmlu
from coe.eval.nested import NestedResult, replay
from coe.routing.data import load_labelled, load_models, load_outcomes
from coe.routing.encoders import EncoderCache

MMLU_PER_CATEGORY = 300


@dataclass
class Setup:
    data: Path
    folds: int
    inner: int
    seed: int


@dataclass
class Encoder:
    label: str
    cache: EncoderCache
    spec: str | None  # names the disk cache of vectors (None: the default model folder)

    def warm(self, texts: list[str]) -> None:
        warm(self.cache, texts, self.spec)


def open_encoders(specs: list[str]) -> list[Encoder]:
    """Each spec that loads; a printed note for each that does not."""
    out = []
    for spec in specs:
        try:
            enc = EncoderCache(spec, memo_size=200_000)
            enc.encode_sync(["probe"])
            out.append(Encoder(spec, enc, spec))
        except (CoeError, OSError, ImportError, ValueError, RuntimeError) as err:
            if spec == "minilm":  # today's default model, by folder, until specs are known
                print(f"note: encoder {spec!r} ({err}); using the default MiniLM folder")
                out.append(Encoder(spec, EncoderCache(None, memo_size=200_000), None))
                continue
            print(f"note: encoder {spec!r} skipped: {err}")
    return out


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def llmrouter_results(s: Setup, enc: Encoder, names: list[str]) -> dict[str, NestedResult]:
    """Nested CV for the presets with a grid; siblings replay their source's picks."""
    path = s.data / "llmrouter" / "train.jsonl"
    rows, models = load_outcomes(path), load_models(s.data / "llmrouter" / "models.json")
    enc.warm([r.text for r in rows])
    res: dict[str, NestedResult] = {}
    for name in names:
        log(f"llmrouter {name} ({enc.label})")
        src = outcomes.SHARES.get(name)
        if src is not None:
            if src not in res:
                res[src] = outcomes.nested(src, rows, models, enc.cache, None, s.folds, s.inner)
            run = outcomes.scorer(name, models, enc.cache)
            res[name] = replay(rows, res[src], run, "routed_score")
        elif name not in res:
            res[name] = outcomes.nested(name, rows, models, enc.cache, None, s.folds, s.inner)
    return {n: res[n] for n in names}


def mmlu_extra(s: Setup, enc: Encoder, pro: list[Any]) -> tuple[list[Any], str]:
    try:
        extra = load_mmlu(per_category=MMLU_PER_CATEGORY)
    except CoeError as err:
        print(f"note: no MMLU extra data: {err}")
        return [], f"not used ({err})"
    enc.warm([e.text for e in extra] + [e.text.split(" The options are:")[0] for e in pro])
    d = dedupe(extra, pro, enc.cache)
    note = (
        f"{len(extra)} MMLU questions ({MMLU_PER_CATEGORY} per category at most, stems only); "
        f"dropped as repeats of the evaluation questions: {d.exact} exact (normalised text) + "
        f"{d.near} near (cosine ≥ 0.95 or token-set Jaccard ≥ 0.8); {len(d.kept)} kept"
    )
    return d.kept, note


def category_results(
    s: Setup, enc: Encoder, names: list[str], with_extra: list[str]
) -> tuple[dict[str, NestedResult], str]:
    pro = load_labelled(s.data / "mmlu_pro" / "validation.jsonl")
    enc.warm([e.text for e in pro])
    res = {}
    for n in names:
        log(f"mmlu-pro {n} ({enc.label})")
        res[n] = categories.nested(n, pro, enc.cache, None, s.folds, s.inner, s.seed)
    note = "not used"
    if with_extra:
        kept, note = mmlu_extra(s, enc, pro)
        for n in with_extra if kept else []:
            log(f"mmlu-pro {n} + MMLU ({enc.label})")
            grid = categories.GRIDS_WITH_EXTRA.get(n)
            res[f"{n} + MMLU"] = categories.nested(
                n, pro, enc.cache, grid, s.folds, s.inner, s.seed, extra_train=kept
            )
    return res, note
