"""Batch engines by name, their command-line options, and the job lifecycle model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import Field

from coe.batch.engines import BatchEngine, EngineOptions, batch_engines
from coe.batch.status import MOVES, NEXT, NOT_DRIVEN, STOPPED, TERMINAL, JobStatus, Phase
from coe.cli.engine_options import engine_params
from coe.config import Settings
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig
from coe.plugin_families import BATCH_ENGINES
from coe.plugins import Plugins


class EchoOptions(EngineOptions):
    label: str | None = Field(None, description="a word")


class EchoEngine(BatchEngine[EchoOptions]):
    """A third engine: says what it was given."""

    name = "echo"
    summary = "says what it got"
    Options = EchoOptions

    def run(
        self,
        inputs: Sequence[str],
        output: str,
        settings: Settings,
        config: CoeConfig | None,
        options: EchoOptions,
    ) -> dict[str, Any]:
        return {"inputs": list(inputs), "output": output, "label": options.label}


class ClashOptions(EngineOptions):
    workers: int = Field(1, description="the local engine has this one")


class ClashEngine(BatchEngine[ClashOptions]):
    name = "clash"
    Options = ClashOptions

    def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}


def registry(*targets: str) -> Plugins[BatchEngine[Any]]:
    engines: Plugins[BatchEngine[Any]] = Plugins.of(BATCH_ENGINES)
    engines.load_builtins(BATCH_ENGINES)
    for target in targets:
        engines.load_target(target, origin=f"entry point ({target})")
    return engines


def test_the_built_in_engines_load_by_name() -> None:
    engines = batch_engines()
    assert engines.names() == ["local", "ray"]
    assert engines.get("local").Options().model_dump() == {"workers": 2}
    assert engines.get("ray").Options().model_dump()["route_actors"] == 2
    with pytest.raises(ConfigError, match="unknown batch engine 'nope'"):
        engines.get("nope")


def test_a_third_engine_is_one_class_and_brings_its_options() -> None:
    engines = registry(f"{__name__}:EchoEngine")
    assert engines.names() == ["echo", "local", "ray"]

    @click.command()
    @click.argument("inputs", nargs=-1)
    def cmd(inputs: tuple[str, ...], engine: str, **given: Any) -> None:
        cls = engines.get(engine)
        options = cls.Options.model_validate({k: given[k] for k in cls.Options.model_fields})
        click.echo(cls().run(inputs, "out", Settings(), None, options))

    cmd.params.extend(engine_params(engines))
    out = CliRunner().invoke(cmd, ["a.jsonl", "--engine", "echo", "--label", "hi"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "{'inputs': ['a.jsonl'], 'output': 'out', 'label': 'hi'}"
    helped = CliRunner().invoke(cmd, ["--help"]).output
    assert "echo: says what it got" in helped
    assert "echo: a word" in helped


def test_two_engines_with_one_option_name_are_refused() -> None:
    with pytest.raises(ConfigError, match="option 'workers'"):
        engine_params(registry(f"{__name__}:ClashEngine"))


def test_a_target_that_is_no_engine_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a batch class"):
        registry(f"{__name__}:EchoOptions")


def test_engine_models_is_an_existing_file(tmp_path: Path) -> None:
    params = {p.name: p for p in engine_params(batch_engines())}
    kind = params["engine_models"].type
    assert isinstance(kind, click.Path) and kind.exists


def test_the_lifecycle_is_one_graph() -> None:
    assert {s.value for s in JobStatus} == {
        "validating",
        "failed",
        "in_progress",
        "finalizing",
        "completed",
        "expired",
        "cancelling",
        "cancelled",
    }
    assert set(MOVES) == set(JobStatus)
    assert all(not MOVES[s] for s in TERMINAL)
    assert all(MOVES[s] for s in set(JobStatus) - TERMINAL)
    reachable = {JobStatus.VALIDATING}
    for _ in JobStatus:
        reachable |= {n for s in reachable for n in MOVES[s]}
    assert reachable == set(JobStatus)
    assert STOPPED <= NOT_DRIVEN and TERMINAL <= NOT_DRIVEN
    # route -> run -> aggregate, and nothing after
    order, at = [], Phase.ROUTE
    while at is not None:
        order.append(at)
        at = NEXT[at]
    assert order == [Phase.ROUTE, Phase.RUN, Phase.AGGREGATE]
