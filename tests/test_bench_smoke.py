"""bench/routing_bench.py on the test data slices with the static encoder (no torch): every
column gets a number, each measured decision really encodes, cache hits are hits, and the
gateway half serves the encoder it names. bench/ray_batch_bench.py at 60 lines: both batch
engines answer every line with the same experts. bench/gpu_ray_check.py and
bench/gpu_pool_check.py on a machine without a GPU: exit 2, naming what is missing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.routing_bench import (
    CHUNK,
    Sizes,
    add_deltas,
    gateways,
    load_queries,
    run_bench,
    tables,
)
from bench.routing_bench_gateway import GatewayPlan
from coe.routing.encoder_build import build_static

STATIC = "minilm-static"
TINY = Sizes(
    single_short=20,
    single_long=5,
    cache_hits=10,
    batch_queries=300,
    folds=2,
    gateway=GatewayPlan(route_requests=5, chat_requests=12, levels=(1, 4)),
)


@pytest.fixture(scope="module")
def static_encoder() -> str:
    """The distilled static encoder (built once into the cache folder, ~1-2 min the first
    time on two cores; every later run finds it)."""
    build_static()
    return STATIC


def test_router_and_quality_columns(static_encoder: str, data_dir: Path) -> None:
    report = run_bench(data_dir, [static_encoder], TINY, with_gateway=False)
    r = report["encoders"][STATIC]
    speed, quality = r["router"], r["quality"]
    assert report["queries"] == {"short": 299, "long": report["queries"]["long"], "batch": 300}
    assert report["queries"]["long"] >= 50  # joined MMLU-Pro questions fill a small slice
    assert 900 <= speed["long_mean_chars"] <= 1400
    for key in ("short", "long"):
        assert 0 < speed[key]["p50_ms"] <= speed[key]["p99_ms"]
    # every measured decision encoded its query: warm-up 13, singles, one call per chunk
    chunks = -(-300 // CHUNK)
    assert speed["encoder_calls"] == 13 + TINY.single_short + TINY.single_long + chunks
    assert speed["cache_hits"] == TINY.cache_hits and speed["cache_hit_p50_ms"] > 0
    assert speed["batch_decisions_per_s"] > 0
    for key in ("mmlu_pro_knn_acc", "mmlu_pro_logreg_acc", "healthcare_test_acc"):
        assert 0.2 < quality[key] <= 1.0, key  # 14 or 7 classes: far above chance
    assert quality["mmlu_pro_n"] == 196 and quality["healthcare_test_n"] > 0
    text = tables(report)
    assert STATIC in text and f"load_avg_1m {report['load_avg_1m']}" in text
    assert str(speed["batch_decisions_per_s"]) in text


def test_deltas_are_points_against_minilm() -> None:
    q = {"mmlu_pro_knn_acc": 0.5, "mmlu_pro_logreg_acc": 0.6, "healthcare_test_acc": 0.8}
    results: dict[str, dict[str, Any]] = {
        "minilm": {"quality": dict(q)},
        STATIC: {"quality": {**q, "mmlu_pro_knn_acc": 0.455}},
    }
    add_deltas(results)
    assert results[STATIC]["quality"]["delta_pts_vs_minilm"] == {
        "mmlu_pro_knn_acc": -4.5,
        "mmlu_pro_logreg_acc": 0.0,
        "healthcare_test_acc": 0.0,
    }


@pytest.mark.process
def test_gateway_serves_the_named_encoder(static_encoder: str, data_dir: Path) -> None:
    q = load_queries(data_dir, 10)
    results: dict[str, dict[str, Any]] = {STATIC: {}}
    asyncio.run(gateways([static_encoder], q, TINY.gateway, results))
    g = results[STATIC]["gateway"]
    assert "error" not in g, g.get("error")
    assert g["errors"] == 0
    assert not g["torch_loaded"]  # the static encoder serves without torch
    assert g["rss_mib"] > 30
    assert g["route_short_p50_ms"] > 0 and g["route_long_p50_ms"] > 0
    for level in (1, 4):
        row = g[f"chat_c{level}"]
        assert row["routed"]["n"] == row["named"]["n"] == 12
        assert row["routed"]["rps"] > 0 and row["ratio_rps"] > 0


@pytest.mark.ray
@pytest.mark.redis
@pytest.mark.embed
def test_ray_batch_bench_runs_both_engines(tmp_path: Path) -> None:
    """bench/ray_batch_bench.py at 60 lines, as its one command: the Redis engine with 1 and
    2 workers and the Ray engine each answer every line, with the same experts."""
    out = tmp_path / "ray-bench.json"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "bench/ray_batch_bench.py", "--lines", "60", "--json-out", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {(r["engine"], r["workers"]): r for r in report["runs"]}
    assert list(runs) == [("redis", "1"), ("redis", "2"), ("ray", "2x2")]
    for r in runs.values():
        assert (r["completed"], r["failed"]) == (60, 0), r
        assert r["seconds"] > 0 and r["lines_per_s"] > 0
    assert runs["redis", "1"]["vs_redis_1"] == 1.0
    assert set(runs["ray", "2x2"]["phases"]) >= {"route", "answer", "combine", "write"}
    checks = report["checks"]
    assert checks["every_line_once"] == {"redis-1": True, "redis-2": True, "ray-2x2": True}
    assert checks["ray_expert_differs_from"] == {"redis-1": 0, "redis-2": 0}
    assert checks["k2_lines"] == 6  # every tenth line fanned out to two experts
    assert sum(checks["lines_per_expert"].values()) == 60
    assert len(checks["lines_per_expert"]) >= 2  # the router spread the lines
    assert report["table"] in done.stdout
    rows = [line.split()[:2] for line in done.stdout.splitlines()]
    assert ["redis", "1"] in rows and ["redis", "2"] in rows and ["ray", "2x2"] in rows


# -- the GPU checks on a machine without a GPU: they stop with exit 2, naming what is missing


def test_gpu_ray_check_stops_naming_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import gpu_ray_check

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets both; the test puts them back
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    absent = [m for m in gpu_ray_check.NEEDED if importlib.util.find_spec(m.split(".")[0]) is None]
    assert gpu_ray_check.main(["--out", str(tmp_path), "--model", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert "gpu_ray_check: missing prerequisites (see the header)" in out.out
    if absent:
        assert f"not importable: {', '.join(absent)}" in out.err
    else:
        assert "no CUDA device visible" in out.err
    assert not (tmp_path / "in.jsonl").exists()  # stopped before writing anything


@pytest.mark.process
def test_gpu_pool_check_stops_naming_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import gpu_pool_check

    env = {"PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    assert gpu_pool_check.main(env) == 2
    out = capsys.readouterr().out
    assert "== [  0s] 1/6 python, vLLM and coe's dependencies" in out
    if importlib.util.find_spec("vllm") is None:
        assert "CANNOT RUN: vLLM is not importable by" in out
    else:
        assert "CANNOT RUN: torch sees no CUDA GPU (CPU_SMOKE=1 runs the CPU variant)" in out
    assert "2/6 model" not in out
    assert gpu_pool_check.main({**env, "EXPERTS": "5"}) == 2
    assert "EXPERTS must be 2 or 3, not 5" in capsys.readouterr().err
