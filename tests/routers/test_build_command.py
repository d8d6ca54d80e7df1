"""A router plug-in brings its own `coe build` command; the built-in builders keep their names."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from coe.cli import main

ROUTER = '''
import click

from coe.routing import RouteContext, RouteDecision, Router


@click.command("echo-table")
@click.option("--word", required=True, help="what the table holds")
def build_echo_table(word: str) -> None:
    """Write the echo router's table."""
    click.echo(f"table: {word}")


class EchoRouter(Router):
    type_name = "echo"
    build_command = build_echo_table

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        return RouteDecision.abstain(self.name, "echo")
'''
BUILT_INS = {"category-map", "profiles", "instructions", "encoder"}


@pytest.fixture
def experts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "echo.py").write_text(ROUTER)
    path = tmp_path / "experts.yaml"
    path.write_text(
        "experts: [{name: a, model: m, endpoints: ['http://127.0.0.1:9']}]\n"
        "default_expert: a\nrouters_dirs: [mine]\n"
    )
    monkeypatch.setenv("COE_EXPERTS_FILE", str(path))
    return path


def listed(output: str) -> set[str]:
    return {line.split()[0] for line in output.split("Commands:")[1].splitlines() if line}


def test_build_lists_the_built_ins_and_the_routers_command(experts_file: Path) -> None:
    out = CliRunner().invoke(main, ["build", "--help"])
    assert out.exit_code == 0, out.output
    assert listed(out.output) == {*BUILT_INS, "echo-table"}
    assert "Write the echo router's table." in out.output


def test_the_routers_command_runs(experts_file: Path) -> None:
    out = CliRunner().invoke(main, ["build", "echo-table", "--word", "hi"])
    assert out.exit_code == 0, out.output
    assert out.output == "table: hi\n"


def test_without_an_experts_file_the_built_ins_remain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COE_EXPERTS_FILE", str(tmp_path / "none.yaml"))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["build", "--help"])
    assert out.exit_code == 0, out.output
    assert listed(out.output) == BUILT_INS
