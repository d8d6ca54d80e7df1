"""One small package from outside the tree with a plug-in of every family, pip-installed into
a private folder and used through experts.yaml alone: each plug-in's effect is checked."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from coe.aggregation import ExpertAnswer
from coe.cli import main
from coe.dispatch import ExpertClient
from coe.errors import ConfigError
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import build_engine
from coe.plugin_families import BATCH_ENGINES, FAMILIES
from coe.plugins import Plugins
from coe.routing.encoders import EncoderCache
from coe.runtime import check_plugins
from coe.store.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[2]
MODULES = ("oot_plugins", "oot_batch")

PLUGINS = '''
"""A plug-in of every family but the batch engine (oot_batch), each leaving a mark."""
from typing import Any

import click
import numpy as np

from coe.aggregation import Strategy
from coe.pool.controllers.static import StaticController
from coe.routing import RouteContext, RouteDecision, Router
from coe.routing.decision import ranked_from_scores
from coe.routing.encoder_backends import EncoderKind


@click.command("oot-table")
def build_table() -> None:
    """Build the oot-last router's table."""
    click.echo("oot table built")


class LastRouter(Router):
    type_name = "oot-last"
    build_command = build_table

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        names = sorted(ctx.experts)
        scores = {n: float(i + 1) for i, n in enumerate(names)}
        return RouteDecision(candidates=ranked_from_scores(scores), router=self.name,
                             reason="oot: the last expert by name", k=2)


class MirrorController(StaticController):
    kind = "oot-mirror"


class Shortest(Strategy):
    name = "oot-shortest"

    async def combine(self, job):
        return job.final(min(job.ok, key=lambda a: len(a.text)))


class LengthBackend:
    dim = 2
    inline = True

    def encode(self, texts: Any) -> np.ndarray:
        rows = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class LengthKind(EncoderKind):
    kind = "oot-length"

    @classmethod
    def load(cls, where, spec, batch_size):
        return LengthBackend()
'''

BATCH = '''
"""A batch engine: each input line's custom_id echoed with its own option's prefix."""
import json
from pathlib import Path

from pydantic import Field

from coe.batch.engines import BatchEngine, EngineOptions


class EchoOptions(EngineOptions):
    echo_prefix: str = Field("echo:", description="what each output line starts with")


class EchoEngine(BatchEngine):
    name = "oot-echo"
    summary = "echoes custom ids"
    Options = EchoOptions

    def run(self, inputs, output, settings, config, options):
        ids = [
            json.loads(line)["custom_id"]
            for path in inputs
            for line in Path(path).read_text().splitlines()
            if line.strip()
        ]
        Path(output).write_text("".join(f"{options.echo_prefix}{i}\\n" for i in ids))
        return {"request_counts": {"total": len(ids), "completed": len(ids), "failed": 0}}
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "coe-oot-plugins"
version = "0.1.0"

[project.entry-points."coe.routers"]
oot-last = "oot_plugins:LastRouter"
[project.entry-points."coe.swap_controllers"]
oot-mirror = "oot_plugins:MirrorController"
[project.entry-points."coe.aggregations"]
oot-shortest = "oot_plugins:Shortest"
[project.entry-points."coe.encoders"]
oot-length = "oot_plugins:LengthKind"
[project.entry-points."coe.batch_engines"]
oot-echo = "oot_batch:EchoEngine"

[tool.setuptools]
py-modules = ["oot_plugins", "oot_batch"]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("oot")
    source = root / "src"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (source / "oot_plugins.py").write_text(textwrap.dedent(PLUGINS))
    (source / "oot_batch.py").write_text(textwrap.dedent(BATCH))
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"pip could not install the package:\n{done.stdout}{done.stderr}")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in MODULES:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()


def config(tmp_path: Path) -> CoeConfig:
    model = tmp_path / "length-model"
    model.mkdir(exist_ok=True)
    return CoeConfig.model_validate(
        {
            "experts": [
                {"name": n, "model": "m", "endpoints": ["http://pool:8100"], "pool": "p"}
                for n in ("alpha", "beta", "gamma")
            ],
            "default_expert": "alpha",
            "encoder": f"oot-length:{model}",
            "routers": {"last": {"type": "oot-last"}},
            "pipelines": {
                "auto": {"routers": ["last"], "k": 2,
                         "aggregation": {"strategy": "oot-shortest"}},
            },
            "pools": {"p": {"service": "http://pool:8100", "capacity": 1,
                            "controller": "oot-mirror",
                            "params": {"upstreams": {n: f"http://v{n}:8000"
                                                     for n in ("alpha", "beta", "gamma")}}}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )  # fmt: skip


def test_every_family_is_in_the_table() -> None:
    assert [f.group for f in FAMILIES] == [
        "coe.routers", "coe.swap_controllers", "coe.aggregations", "coe.encoders",
        "coe.batch_engines",
    ]  # fmt: skip


def test_check_config_lists_the_router_and_the_controller(site: Path, tmp_path: Path) -> None:
    lines = check_plugins(config(tmp_path), tmp_path)
    assert "router last: oot-last (oot_plugins)" in lines
    assert "pool p: oot-mirror (oot_plugins)" in lines


async def test_the_router_and_the_strategy_answer(site: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(cfg)
    engine = await build_engine(cfg, registry, ExpertClient(None), store, tmp_path)  # type: ignore[arg-type]
    plan = await engine.plan({"model": "coe/auto", "messages": [{"role": "user", "content": "hi"}]})
    assert plan.decision.reason == "oot: the last expert by name"
    assert plan.decision.chosen == ["gamma", "beta"]

    def said(expert: str, text: str) -> ExpertAnswer:
        message = {"role": "assistant", "content": text}
        response = {"choices": [{"index": 0, "message": message}], "usage": {}}
        return ExpertAnswer(expert, 1.0, "ok", 5.0, response)

    body = {"model": "coe/auto", "messages": [{"role": "user", "content": "hi"}]}
    answer = await engine.combine(
        plan, [said("gamma", "a long answer"), said("beta", "short")], body
    )
    assert answer.expert == "beta" and answer.fanout is not None
    assert answer.fanout["aggregation"]["strategy"] == "oot-shortest"


def test_the_router_brings_its_build_command(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COE_EXPERTS_FILE", str(tmp_path / "none.yaml"))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["build", "oot-table"])
    assert out.exit_code == 0, out.output
    assert out.output == "oot table built\n"


def test_the_encoder_kind_encodes(site: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    encoders = EncoderCache(cfg.encoder)
    assert encoders.resolve().kind == "oot-length"
    vecs = encoders.encode_sync(["ab", "abcdefgh"])
    assert vecs.shape == (2, 2) and vecs[1][0] > vecs[0][0]


def test_an_unknown_encoder_kind_names_the_installed_ones(site: Path) -> None:
    with pytest.raises(
        ConfigError, match="KIND one of sentence-transformers, onnx, static, oot-length"
    ):
        EncoderCache("oot-size:model")


def test_the_batch_engine_runs_a_job_by_name_with_its_own_option(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engines = Plugins.of(BATCH_ENGINES)
    engines.load_entry_points()
    assert engines.get("oot-echo").__module__ == "oot_batch"
    monkeypatch.chdir(tmp_path)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "coe/auto", "messages": []}} for i in range(3)]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = CliRunner().invoke(
        main,
        ["batch", "run", "in.jsonl", "-o", "out.txt", "--engine", "oot-echo",
         "--echo-prefix", "seen:"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert (tmp_path / "out.txt").read_text() == "seen:r0\nseen:r1\nseen:r2\n"
    assert '"completed": 3' in out.output


def test_check_config_names_an_unknown_encoder_kind(site: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path).model_copy(update={"encoder": "oot-size:model"})
    with pytest.raises(ConfigError, match=r"encoder: unknown encoder 'oot-size:model'"):
        check_plugins(cfg, tmp_path)
