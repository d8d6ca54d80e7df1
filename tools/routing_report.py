"""Write docs/routing-eval.md: every router against best single, random and oracle.

Hyperparameters are chosen by nested cross-validation (coe/eval/nested.py), so every
headline number comes from outer test folds that never influenced a choice. Sections:
LLMRouter outcomes with LLMRouterBench-style figures and the cost sweep, MMLU-Pro
categories (with MMLU as extra training data), healthcare routes with abstention, a
per-encoder quality table, and routing speed from a benchmark's JSON output.

    python tools/routing_report.py --data-dir ../shared/data --out docs/routing-eval.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coe.eval import categories, outcomes  # noqa: E402 - after the path set-up
from coe.eval.figures import SweepPoint, bench_figures  # noqa: E402
from coe.eval.nested import NestedResult, describe_grid  # noqa: E402
from coe.eval.suite import (  # noqa: E402
    Encoder,
    Setup,
    category_results,
    llmrouter_results,
    log,
    open_encoders,
)
from coe.routing.data import load_labelled, load_models, load_outcomes  # noqa: E402

LAMBDAS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
ENCODERS = ["minilm", "minilm-int8", "minilm-static"]
CATEGORY_ROUTERS = [
    "category",
    "category-mlp",
    "category-knn",
    "category-centroid",
    "embedding-knn",
    "embedding-centroid",
]
WITH_MMLU = ["category"]  # trained with MMLU added to every training fold


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def outcome_section(s: Setup, enc: Encoder) -> tuple[str, dict[str, Any]]:
    res = llmrouter_results(s, enc, list(outcomes.PRESETS))
    path = s.data / "llmrouter" / "train.jsonl"
    rows, models = load_outcomes(path), load_models(s.data / "llmrouter" / "models.json")
    first = next(iter(res.values()))
    base, oracle = first.mean("best_single_score"), first.mean("oracle_score")
    best_cost = first.mean("best_single_cost")
    single = first.folds[0].result["best_single"]
    rows_out: list[list[Any]] = [
        [f"best single model ({single})", base, "+0.0", "0%", best_cost, "-"],
        ["random model", first.mean("random_score"), "", "", "", "-"],
        ["oracle (best model per query)", oracle, "", "100%", "", "-"],
    ]
    for n, r in res.items():
        fig = bench_figures(r.mean(), base, oracle, best_cost)
        src = outcomes.SHARES.get(n)
        picked = r.picked() + (f", as `{src}` picked" if src else "")
        rows_out.append(
            [
                f"`{n}`",
                r.mean(),
                f"{fig.gain_points:+.1f}",
                fig.gap_text(),
                r.mean("mean_cost"),
                picked,
            ]
        )
    text = _table(
        [
            "router",
            f"score ({s.folds}-fold nested mean)",
            "vs best single (points)",
            "best→oracle gap closed",
            "mean cost $/Mtok",
            "params picked (most frequent)",
        ],
        rows_out,
    )
    sweep_rows, points = [], []
    for name in ("category-cost", "outcome-cost"):
        src = outcomes.SHARES[name]
        log(f"sweep {name}")
        for row in outcomes.sweep(name, rows, models, enc.cache, res[src], LAMBDAS):
            lam, score, cost = row["cost_lambda"], row["routed_score"], row["mean_cost"]
            points.append(SweepPoint(name, lam, score, cost))
            share = f"{cost / row['best_single_cost']:.0%}"
            sweep_rows.append([f"`{name}`", lam, score, cost, share])
    text += (
        f"\n\nCost/quality sweep ({s.folds}-fold means on the same outer folds, each fold with "
        "the quality knobs picked on its training part; utility = predicted score - λ·price):"
        "\n\n" + _table(["router", "λ", "score", "mean cost", "cost vs best single"], sweep_rows)
    )
    best_name = max(res, key=lambda n: res[n].mean())
    fig = bench_figures(res[best_name].mean(), base, oracle, best_cost, points)
    figures = _table(
        ["figure", "value"],
        [
            ["best router", f"`{best_name}` {res[best_name].mean()}"],
            ["gain over the best single model", f"{fig.gain_points:+.1f} points"],
            ["share of the best-single → oracle gap closed", fig.gap_text()],
            ["cost saved at equal quality (cheapest λ ≥ best single)", fig.saved_text()],
        ],
    )
    return figures + "\n\n" + text, {"best": best_name, "res": res, "fig": fig, "base": base}


def category_section(s: Setup, enc: Encoder) -> tuple[str, dict[str, Any]]:
    res, note = category_results(s, enc, CATEGORY_ROUTERS, WITH_MMLU)
    rows = [
        [
            f"`{n.split(' + ')[0]}`" + (" + MMLU" if " + " in n else ""),
            r.mean(),
            r.std(),
            r.summary()["n"],
            describe_grid(r.grid) or "none",
            r.picked(),
        ]
        for n, r in res.items()
    ]
    text = _table(
        ["router", "accuracy (outer folds)", "std", "n", "grid", "picked (most frequent)"], rows
    )
    return text + f"\n\nExtra training data: {note}.", res


def healthcare_section(s: Setup, enc: Encoder) -> tuple[str, dict[str, Any]]:
    path = s.data / "healthcare_routes" / "evaluation.csv"
    tr, va, te = (load_labelled(path, split) for split in ("train", "validation", "test"))
    enc.warm([e.text for e in [*tr, *va, *te]])
    rows, res = [], {}
    for name in ("embedding-knn", "embedding-centroid", "category-abstain", "category"):
        r = res[name] = categories.evaluate(name, tr, te, enc.cache, va)
        knob = ", ".join(f"{k}={v}" for k, v in r.get("calibrated", {}).items()) or "none"
        rows.append(
            [
                f"`{name}`",
                r["accuracy"],
                r["accuracy_with_alternates"],
                r["abstain_recall"],
                r["abstain_rate"],
                knob,
            ]
        )
    header = [
        "router",
        "accuracy (abstain counts)",
        "with alternate routes",
        "abstain recall",
        "abstain rate",
        "calibrated on validation",
    ]
    return _table(header, rows), res


def encoder_table(s: Setup, encs: list[Encoder], first: dict[str, Any]) -> str:
    """Key routers per encoder: the routers that won with the first encoder, re-run."""
    best_out, best_cat = first["outcome"]["best"], first["category"]
    cat_name = max(best_cat, key=lambda n: best_cat[n].mean())
    plain, extra = cat_name.split(" + ")[0], " + " in cat_name
    rows = []
    for i, enc in enumerate(encs):
        if i == 0:
            o, c, h = first["outcome"]["res"][best_out], best_cat[cat_name], first["health"]
        else:
            o = llmrouter_results(s, enc, [best_out])[best_out]
            c = category_results(s, enc, [] if extra else [plain], [plain] if extra else [])[0][
                cat_name
            ]
            h = healthcare_section(s, enc)[1]
        rows.append([f"`{enc.label}`", o.mean(), c.mean(), h["category-abstain"]["accuracy"]])
    return _table(
        [
            "encoder",
            f"LLMRouter `{best_out}` score",
            f"MMLU-Pro `{cat_name}` accuracy",
            "healthcare `category-abstain` accuracy",
        ],
        rows,
    )


def speed_section(path: Path | None) -> tuple[str, dict[str, Any]]:
    """Per-encoder speed and gateway rows from `bench/routing_bench.py --json-out FILE`."""
    if path is None:
        return "(not given: pass `--speed FILE`, from `bench/routing_bench.py --json-out`)", {}
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
        encoders = r["encoders"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        return f"(could not read {path}: {err})", {}
    rows, gw_rows = [], []
    for name, e in encoders.items():
        if "router" not in e:
            continue
        ro = e["router"]
        rows.append(
            [
                f"`{name}`",
                f"{ro['short']['p50_ms']} / {ro['short']['p99_ms']}",
                f"{ro['long']['p50_ms']} / {ro['long']['p99_ms']}",
                ro["cache_hit_p50_ms"],
                ro["batch_decisions_per_s"],
            ]
        )
        g = e.get("gateway")
        if g:
            c1, c16 = g["chat_c1"], g["chat_c16"]
            gw_rows.append(
                [
                    f"`{name}`",
                    g["rss_mib"],
                    "yes" if g["torch_loaded"] else "no",
                    f"{g['route_short_p50_ms']} / {g['route_long_p50_ms']}",
                    f"{c1['routed']['rps']} / {c1['named']['rps']} ({c1['ratio_rps']})",
                    f"{c16['routed']['rps']} / {c16['named']['rps']} ({c16['ratio_rps']})",
                ]
            )
    text = (
        f"{path.name}: cpu_count {r.get('cpu_count')}, load average {r.get('load_avg_1m_at_start')}"
        f" at start and {r.get('load_avg_1m')} at the end, OMP_NUM_THREADS "
        f"{r.get('omp_num_threads')}.\n\n"
        + _table(
            [
                "encoder",
                "short p50 / p99 ms",
                "~1,150 chars p50 / p99 ms",
                "cache hit p50 ms",
                "batched decisions/s",
            ],
            rows,
        )
        + "\n\nGateway (`coe serve`, fast upstream, no query cache; routed `coe/auto` vs the "
        "named `generalist`, requests/s and the ratio):\n\n"
        + _table(
            ["encoder", "RSS MiB", "torch", "/v1/route p50 short / long ms", "c=1", "c=16"],
            gw_rows,
        )
    )
    return text, encoders


def _targets(o: dict[str, Any], c: dict[str, NestedResult], speed: dict[str, Any]) -> str:
    fig, best = o["fig"], o["best"]
    cat_name = max(c, key=lambda n: c[n].mean())
    acc = c[cat_name].mean()
    saved = fig.cost_saved
    rows = [
        [
            "best router ≥ best single + 4 points (LLMRouter)",
            f"`{best}` {fig.gain_points:+.1f} points",
            "yes" if fig.gain_points >= 4 else "no",
        ],
        [
            "best single's score at ≤ half its cost",
            fig.saved_text(),
            "yes" if saved is not None and saved >= 0.5 else "no",
        ],
        [
            "MMLU-Pro category accuracy ≥ 0.80 (nested CV, 350 q)",
            f"`{cat_name}` {acc}",
            "yes" if acc >= 0.80 else f"no (short by {0.80 - acc:.3f})",
        ],
    ]
    for name, e in speed.items():
        ro, g = e.get("router"), e.get("gateway") or {}
        if not ro:
            continue
        p50 = max(ro["short"]["p50_ms"], ro["long"]["p50_ms"])
        p99 = max(ro["short"]["p99_ms"], ro["long"]["p99_ms"])
        ratio = min(
            g.get("chat_c1", {}).get("ratio_rps", 0), g.get("chat_c16", {}).get("ratio_rps", 0)
        )
        rows += [
            [f"`{name}`: decision p50 ≤ 1 ms at any length", f"{p50} ms", _yes(p50 <= 1)],
            [f"`{name}`: decision p99 ≤ 2 ms at any length", f"{p99} ms", _yes(p99 <= 2)],
            [
                f"`{name}`: ≥ 5,000 decisions/s batched",
                f"{ro['batch_decisions_per_s']}/s",
                _yes(ro["batch_decisions_per_s"] >= 5000),
            ],
        ]
        if g:
            rows.append(
                [
                    f"`{name}`: routed ≥ 0.8 x named throughput (c=1 and c=16)",
                    f"{ratio} x",
                    _yes(ratio >= 0.8),
                ]
            )
    return _table(["target", "measured", "met"], rows)


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def write_report(s: Setup, out: Path, encs: list[Encoder], speed: Path | None = None) -> Path:
    enc = encs[0]
    o_text, o = outcome_section(s, enc)
    c_text, c = category_section(s, enc)
    h_text, h = healthcare_section(s, enc)
    e_text = encoder_table(s, encs, {"outcome": o, "category": c, "health": h})
    b_text, b = speed_section(speed)
    grids = "; ".join(f"`{n}`: {describe_grid(g) or 'none'}" for n, g in {**outcomes.GRIDS}.items())
    cat_grids = (
        "; ".join(f"`{n}`: {describe_grid(g) or 'none'}" for n, g in categories.GRIDS.items())
        + "; with MMLU: "
        + "; ".join(f"`{n}`: {describe_grid(g)}" for n, g in categories.GRIDS_WITH_EXTRA.items())
    )
    doc = f"""# Routing evaluation

Regenerate with one command, `make eval` (from the repository root): it runs
`bench/routing_bench.py --json-out FILE`, then
`python tools/routing_report.py --data-dir ../shared/data --out docs/routing-eval.md --speed FILE`.
Encodings are cached under `~/.cache/coe/embeddings`, so reruns of the report take minutes.

Written on {dt.date.today().isoformat()}; encoders: {", ".join(e.label for e in encs)} (the
detailed sections use `{enc.label}`). Every number comes from the router classes in
`routers/`, fitted on training folds only.

**How parameters were tuned.** Nested cross-validation (`coe/eval/nested.py`): {s.folds}
outer folds fixed by id (seed {s.seed}); inside each outer training part, a {s.inner}-fold
inner split (seed {s.seed + 1}) scores every grid point, the best (ties: the earlier) is
refitted on the whole outer training part and scored once on the outer test fold. Headline
numbers are means over the outer test folds only. Grids, LLMRouter: {grids}; presets
marked "as X picked" reuse the knobs X picked on the same fold (same step 1); the cost
weight λ is swept, never tuned for quality. Grids, categories: {cat_grids}. Extra training
data (MMLU) joins training parts only, never a test fold.

## Targets

{_targets(o, c, b)}

## LLMRouter outcomes (5,608 queries, 9 models)

Score = the chosen model's measured score on the query; cost = the chosen model's price
((input + output) / 2, $ per million tokens, from `models.json`). The best single model
is picked on each training fold. LLMRouterBench-style figures for the best router: gain
over the best single model, share of the best-single → oracle gap closed
((router - best) / (oracle - best)), and cost saved at equal quality (the cheapest λ of
the sweep whose score still matches the best single model, as a share of its cost).

{o_text}

## MMLU-Pro categories (14 classes, 25 questions each)

{c_text}

## Healthcare routes with abstention

Trained on the `train` split (positives), the abstention knob calibrated on `validation`,
scored on `test` (24 utterances, 3 of which must match no route). Accuracy counts an
abstention as correct only where no route fits.

{h_text}

## Quality per encoder

The routers that won above, re-run with each encoder (same folds, same grids):

{e_text}

## Speed

From `--speed FILE`, written by `python bench/routing_bench.py --json-out FILE` (router
decisions through the shipped `topic` router with each encoder, no query cache; short =
healthcare utterances and MMLU-Pro stems, long = LLMRouter queries of 900-1,400 characters).

{b_text}

## Notes

- `category-outcome` is the CoE two-step router whose step 2 ranks experts by the expected
  score Σ_c p(c|q)·mean_score(c, m) (built by `coe build category-map --scores-out`);
  `category` uses the plain best-expert-per-category table; `category-cost` adds -λ·cost.
- `embedding-outcome` predicts each model's score from the k nearest training queries
  (softmax-weighted by cosine); `outcome-cost` subtracts λ·price.
- `skills` runs without a keyword LLM here: each query is tagged with its 3 nearest
  vocabulary terms, and profiles are +1/-1 (2·score - 1) sums per skill.
- `instruction` uses the models' one-paragraph descriptions (price and size, little about
  skills) and the query itself; it is close to random here, as expected from the data.
- `category-mlp` is `classifier: mlp` of `routers/category.py` (one hidden layer); "+ MMLU"
  adds MMLU questions mapped to the 14 categories by `coe/eval/mmlu_subjects.json`
  (served with `extra_examples: mmlu`). Several classes overlap by construction
  (health/biology, engineering/physics, "other").
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the routing evaluation report.")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="the shared data sets (llmrouter/, mmlu_pro/, healthcare_routes/)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "routing-eval.md")
    parser.add_argument("--folds", type=int, default=5, help="outer folds")
    parser.add_argument("--inner-folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--encoders",
        default=",".join(ENCODERS),
        help="comma-separated encoder specs or folders; the first drives the detailed sections",
    )
    parser.add_argument("--speed", type=Path, help="JSON output of bench/routing_bench.py")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir}: not a directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encs = open_encoders([e.strip() for e in args.encoders.split(",") if e.strip()])
    if not encs:
        parser.error(f"--encoders {args.encoders}: none could be loaded")
    setup = Setup(args.data_dir, args.folds, args.inner_folds, args.seed)
    print(write_report(setup, args.out, encs, args.speed))


if __name__ == "__main__":
    main()
