"""`coe eval ...`: measure routers on labelled data; each command prints one JSON line.

The full report in docs/routing-eval.md is written by `tools/routing_report.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from coe.routing.data import load_labelled, load_models, load_outcomes
from coe.routing.encoders import EncoderCache

eval_group = click.Group("eval", help="Evaluate routers on labelled data (real encoders).")


def _encoders(encoder: str | None) -> EncoderCache:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return EncoderCache(encoder, memo_size=100_000)


def _warm(enc: EncoderCache, texts: list[str], cache: bool) -> None:
    if cache:
        from coe.eval.embcache import warm

        warm(enc, texts)


def _overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE", param_hint="--set")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _emit(result: dict[str, Any]) -> None:
    click.echo(json.dumps(result))


common = [
    click.option(
        "--encoder",
        help="minilm, minilm-int8, minilm-static, KIND:PATH or a sentence-transformers "
        "folder (default: minilm)",
    ),
    click.option("--set", "sets", multiple=True, help="router param override KEY=JSON"),
    click.option(
        "--embed-cache/--no-embed-cache",
        default=True,
        show_default=True,
        help="keep embeddings under $COE_CACHE_DIR (outside the repo)",
    ),
]


def with_common(fn: Any) -> Any:
    for opt in reversed(common):
        fn = opt(fn)
    return fn


@eval_group.command("outcomes")
@click.option("--train", "train_path", required=True, type=click.Path(exists=True))
@click.option("--test", "test_path", required=True, type=click.Path(exists=True))
@click.option("--router", "router_name", default="category-outcome", show_default=True)
@click.option(
    "--models",
    "models_path",
    type=click.Path(exists=True),
    help="models.json with prices (default: next to --train)",
)
@with_common
def outcomes_cmd(
    train_path: str,
    test_path: str,
    router_name: str,
    models_path: str | None,
    encoder: str | None,
    sets: tuple[str, ...],
    embed_cache: bool,
) -> None:
    """Score the chosen model per query on outcome data (trains on --train only)."""
    from coe.eval import outcomes

    train, test = load_outcomes(train_path), load_outcomes(test_path)
    mpath = Path(models_path) if models_path else Path(train_path).with_name("models.json")
    models = load_models(mpath) if mpath.exists() else {}
    enc = _encoders(encoder)
    _warm(enc, [r.text for r in [*train, *test]], embed_cache)
    router = outcomes.fit_router(router_name, train, models, enc, _overrides(sets))
    _emit(outcomes.evaluate(router, train, test, models))


@eval_group.command("categories")
@click.option("--train", "train_path", required=True, type=click.Path(exists=True))
@click.option("--test", "test_path", required=True, type=click.Path(exists=True))
@click.option("--router", "router_name", default="category", show_default=True)
@click.option("--train-split", help="rows of this split only (CSV `split` column)")
@click.option("--test-split")
@click.option(
    "--calibrate",
    "calib_path",
    type=click.Path(exists=True),
    help="data to pick the abstention threshold on (never the test data)",
)
@click.option("--calibrate-split")
@with_common
def categories_cmd(
    train_path: str,
    test_path: str,
    router_name: str,
    train_split: str | None,
    test_split: str | None,
    calib_path: str | None,
    calibrate_split: str | None,
    encoder: str | None,
    sets: tuple[str, ...],
    embed_cache: bool,
) -> None:
    """Category accuracy, per-category accuracy and abstain rate."""
    from coe.eval import categories

    train = load_labelled(train_path, train_split)
    test = load_labelled(test_path, test_split)
    calib = load_labelled(calib_path, calibrate_split) if calib_path else []
    enc = _encoders(encoder)
    _warm(enc, [e.text for e in [*train, *test, *calib]], embed_cache)
    _emit(categories.evaluate(router_name, train, test, enc, calib, _overrides(sets)))


@eval_group.command("kfold")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True))
@click.option("--kind", type=click.Choice(["outcomes", "categories"]), required=True)
@click.option("--router", "router_name", required=True)
@click.option("--folds", default=5, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--models", "models_path", type=click.Path(exists=True))
@click.option(
    "--nested/--no-nested",
    default=False,
    show_default=True,
    help="pick the preset's quality knobs (k, temperature, C) by nested CV: an inner k-fold "
    "on each outer training part; the outer folds only score",
)
@click.option("--inner-folds", default=3, show_default=True, help="with --nested")
@with_common
def kfold_cmd(
    data_path: str,
    kind: str,
    router_name: str,
    folds: int,
    seed: int,
    models_path: str | None,
    nested: bool,
    inner_folds: int,
    encoder: str | None,
    sets: tuple[str, ...],
    embed_cache: bool,
) -> None:
    """k-fold cross-validation (folds fixed by id and seed); prints the mean and each fold.

    With --nested, the grid of the preset (coe/eval/{outcomes,categories}.py GRIDS) is
    searched on inner folds; --set values stay fixed and leave the grid.
    """
    from coe.eval.kfold import run_kfold

    enc = _encoders(encoder)
    if nested:
        _emit(
            _nested(
                kind,
                Path(data_path),
                router_name,
                enc,
                folds,
                inner_folds,
                seed,
                Path(models_path) if models_path else None,
                _overrides(sets),
                embed_cache,
            )
        )
        return
    _emit(
        run_kfold(
            kind,
            Path(data_path),
            router_name,
            enc,
            folds,
            seed,
            Path(models_path) if models_path else None,
            _overrides(sets),
            warm=embed_cache,
        )
    )


def _nested(
    kind: str,
    data: Path,
    router: str,
    enc: EncoderCache,
    folds: int,
    inner: int,
    seed: int,
    models_path: Path | None,
    overrides: dict[str, Any],
    cache: bool,
) -> dict[str, Any]:
    from coe.eval import categories, outcomes

    if kind == "outcomes":
        rows = load_outcomes(data)
        mpath = models_path or data.with_name("models.json")
        models = load_models(mpath) if mpath.exists() else {}
        _warm(enc, [r.text for r in rows], cache)
        grid = {k: v for k, v in outcomes.GRIDS.get(router, {}).items() if k not in overrides}
        res = outcomes.nested(router, rows, models, enc, grid, folds, inner, seed, overrides)
    else:
        items = load_labelled(data)
        _warm(enc, [e.text for e in items], cache)
        grid = {k: v for k, v in categories.GRIDS.get(router, {}).items() if k not in overrides}
        res = categories.nested(router, items, enc, grid, folds, inner, seed, overrides=overrides)
    return {"router": router, "kind": kind, "folds": folds, "seed": seed, **res.summary()}
