"""The evaluation commands on real data slices: one JSON line each, baselines consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from coe.cli.eval import eval_group
from coe.routing.data import OutcomeExample, write_jsonl

pytestmark = pytest.mark.embed


def _dump(rows: list[OutcomeExample], path: Path) -> Path:
    write_jsonl(
        [{"id": r.id, "query": r.text, "task": r.task, "scores": r.scores} for r in rows], path
    )
    return path


@pytest.mark.parametrize("router", ["category-outcome", "outcome-cost", "skills"])
def test_eval_outcomes_prints_one_json_line(
    router: str,
    tmp_path: Path,
    data_dir: Path,
    outcomes: tuple[list[OutcomeExample], list[OutcomeExample]],
) -> None:
    train, test = outcomes[0][::3], outcomes[1]  # a smaller slice: the CLI encodes afresh
    args = [
        "outcomes",
        "--train",
        str(_dump(train, tmp_path / "train.jsonl")),
        "--test",
        str(_dump(test, tmp_path / "test.jsonl")),
        "--router",
        router,
        "--models",
        str(data_dir / "llmrouter" / "models.json"),
        "--no-embed-cache",
    ]
    result = CliRunner().invoke(eval_group, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    for key in (
        "router",
        "n",
        "routed_score",
        "best_single_score",
        "oracle_score",
        "random_score",
        "mean_cost",
        "best_single_cost",
    ):
        assert key in out
    assert out["n"] == len(test) and out["router"] == router
    assert out["oracle_score"] >= max(out["routed_score"], out["best_single_score"])
    assert out["routed_score"] > out["random_score"]


def test_eval_categories_healthcare_with_abstention(data_dir: Path) -> None:
    path = str(data_dir / "healthcare_routes" / "evaluation.csv")
    args = [
        "categories",
        "--train",
        path,
        "--train-split",
        "train",
        "--test",
        path,
        "--test-split",
        "test",
        "--calibrate",
        path,
        "--calibrate-split",
        "validation",
        "--router",
        "embedding-knn",
        "--no-embed-cache",
    ]
    result = CliRunner().invoke(eval_group, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["n"] == 24 and 0 < out["abstain_rate"] < 0.5
    assert out["accuracy"] > 0.6 and out["abstain_recall"] > 0.5
    assert "threshold" in out["calibrated"] and "(abstain)" in out["per_category"]


def test_unknown_router_name_is_a_clear_error(tmp_path: Path, data_dir: Path) -> None:
    path = str(data_dir / "healthcare_routes" / "evaluation.csv")
    result = CliRunner().invoke(
        eval_group,
        ["categories", "--train", path, "--test", path, "--router", "nope", "--no-embed-cache"],
    )
    assert result.exit_code != 0 and "unknown router configuration" in str(result.exception)


def test_kfold_nested_picks_params_on_inner_folds(data_dir: Path) -> None:
    path = str(data_dir / "healthcare_routes" / "evaluation.csv")
    args = ["kfold", "--data", path, "--kind", "categories", "--router", "category-knn"]
    args += ["--folds", "3", "--nested", "--inner-folds", "2", "--no-embed-cache"]
    result = CliRunner().invoke(eval_group, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    nested = out["nested"]
    assert nested["outer_folds"] == 3 and nested["inner_folds"] == 2
    assert nested["grid"] == {"k": [3, 5, 10]}
    assert len(nested["picked"]) == 3 and all(p["k"] in (3, 5, 10) for p in nested["picked"])
    assert out["n"] == 103 and 0.3 < out["accuracy"] <= 1.0
