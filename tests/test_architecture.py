"""The layers of coe (docs/architecture.md), enforced on the import graph of `coe/`.

Every import counts: relative ones, those inside functions and those under TYPE_CHECKING.
No rule has exemptions: a module that must import up a layer is in the wrong layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

COE = Path(__file__).resolve().parents[1] / "coe"

# The house, top to bottom (docs/architecture.md). Every module of coe is in one layer.
FRONTS = ("coe.gateway", "coe.console", "coe.pool_service", "coe.ray_batch", "coe.cli")
WEB = ("coe.web",)  # what the web fronts share: auth, errors, /metrics, request ids
APP = ("coe.runtime", "coe.supervisor", "coe.lifecycle")
BATCH = ("coe.batch",)
TOOLS = ("coe.eval", "coe.deploy")  # offline tools the CLI runs
ENGINE = (
    "coe.pipeline",
    "coe.routing",
    "coe.dispatch",
    "coe.aggregation",
    "coe.pool",
    "coe.local",  # the vLLM servers pools start
    "coe.protocol",  # the OpenAI wire models, with the request's routing policy
    "coe.metadata",  # the `coe` field of chat answers and batch result lines
    "coe.observability",  # metrics and logs of the engine and the fronts
)
BASE = (
    "coe.store",
    "coe.experts",
    "coe.errors",
    "coe.plugins",
    "coe.plugin_families",
    "coe.config",
    "coe.backoff",
    "coe.security",
)
TESTING = ("coe.testing",)  # test doubles (a fake upstream) for tests and users' tests
LAYERS = {
    "fronts": FRONTS,
    "web": WEB,
    "app": APP,
    "batch": BATCH,
    "tools": TOOLS,
    "engine": ENGINE,
    "base": BASE,
    "testing": TESTING,
}
BELOW_FRONTS = WEB + APP + BATCH + TOOLS + ENGINE + BASE + TESTING

# `coe batch` (coe.cli.batch) is a client of our own gateway; the other commands are not.
CLI_OFF_HTTP = (
    "coe.cli.__init__",
    "coe.cli.__main__",
    "coe.cli.build",
    "coe.cli.deploy",
    "coe.cli.engine_options",
    "coe.cli.eval",
    "coe.cli.local_engine",
    "coe.cli.options",
    "coe.cli.pool",
    "coe.cli.route",
    "coe.cli.serve",
)


@dataclass(frozen=True)
class Rule:
    """Modules under `importers` never import `forbidden`. A name matches itself and what is
    under it; `pkg.__init__` names the package module alone. `name` is the test's id."""

    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name}: {'|'.join(self.importers)} -/-> {'|'.join(self.forbidden)}"


ABOVE_BASE = FRONTS + WEB + APP + BATCH + TOOLS + ENGINE

# Top of the stack first: a layer may import what is below it, never what is above.
RULES = [
    # Fronts: only fronts import fronts; the gateway mounts the console; the CLI starts any.
    Rule("only-fronts-import-fronts", BELOW_FRONTS, FRONTS),
    Rule("console-alone", ("coe.console",),
         ("coe.gateway", "coe.pool_service", "coe.ray_batch", "coe.cli")),
    Rule("gateway-mounts-only-the-console", ("coe.gateway",),
         ("coe.pool_service", "coe.ray_batch", "coe.cli")),
    Rule("pool-service-alone", ("coe.pool_service",),
         ("coe.gateway", "coe.console", "coe.ray_batch", "coe.cli")),
    Rule("ray-batch-alone", ("coe.ray_batch",),
         ("coe.gateway", "coe.console", "coe.pool_service", "coe.cli")),
    # Only fronts use the shared web module; only they, it and the test doubles, the web.
    Rule("only-fronts-import-web", APP + BATCH + TOOLS + ENGINE + BASE + TESTING, WEB),
    Rule("web-frameworks-in-fronts", APP + BATCH + TOOLS + ENGINE + BASE,
         ("fastapi", "starlette")),
    # The app layer builds, closes and runs in the background; it serves nothing itself.
    Rule("app-below-fronts", APP, FRONTS + WEB),
    # Batch answers only through the engine: no expert client, no fallback of its own.
    Rule("batch-below-app", BATCH, FRONTS + WEB + APP),
    Rule("batch-through-the-engine", BATCH, ("coe.dispatch", "httpx")),
    Rule("tools-below-batch", TOOLS, FRONTS + WEB + APP + BATCH),
    Rule("engine-below-batch", ENGINE, FRONTS + WEB + APP + BATCH + TOOLS),
    # The router contract stays below the engine that calls it and the tools that score it.
    Rule("routing-below-pipeline", ("coe.routing",), ("coe.pipeline", "coe.eval")),
    Rule("base-at-the-bottom", BASE, ABOVE_BASE),
    Rule("experts-are-data", ("coe.experts",), ("coe.pool", "coe.routing")),
    Rule("nothing-leans-on-test-doubles", ABOVE_BASE + BASE, TESTING),
    # Fronts and routers reach experts through the engine or `coe.dispatch`, never raw HTTP.
    # (The gateway takes an httpx transport for in-process tests; the pool service relays to
    # its own vLLM servers; `coe batch` is a client of our own gateway.)
    Rule("no-raw-http",
         ("coe.console", "coe.ray_batch", *WEB, *CLI_OFF_HTTP, "coe.routing", "coe.aggregation"),
         ("httpx",)),
]  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. coe.batch.worker
    path: str  # its file, e.g. coe/batch/worker.py
    line: int
    target: str  # what it imports, absolute, e.g. coe.gateway.app.create_app
    source: str  # the statement as written


def _within(name: str, prefixes: Sequence[str]) -> bool:
    return any(
        name == p.removesuffix(".__init__")
        if p.endswith(".__init__")
        else name == p or name.startswith(p + ".")
        for p in prefixes
    )


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def imports_of(root: Path) -> Iterator[Import]:
    """Every import statement in the package at `root`, with relative names resolved."""
    for path in sorted(root.rglob("*.py")):
        module, is_package = _module_name(path, root)
        where = path.relative_to(root.parent).as_posix()
        text = path.read_text()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".")
                    drop = node.level - 1 if is_package else node.level
                    anchor = ".".join(package[: len(package) - drop])
                    base = f"{anchor}.{base}" if base else anchor
                # `from coe import gateway` imports coe.gateway: name each imported thing.
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            source = " ".join((ast.get_source_segment(text, node) or "").split())
            for target in targets:
                yield Import(module, where, node.lineno, target, source)


def violations(imports: Iterable[Import], rules: Sequence[Rule]) -> list[str]:
    found = []
    for imp in imports:
        for rule in rules:
            if _within(imp.module, rule.importers) and _within(imp.target, rule.forbidden):
                found.append(f"{imp.path}:{imp.line}: {imp.source}   [{rule}]")
    return sorted(set(found))


@pytest.fixture(scope="module")
def coe_imports() -> list[Import]:
    return list(imports_of(COE))


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_import_rule(rule: Rule, coe_imports: list[Import]) -> None:
    bad = violations(coe_imports, [rule])
    assert not bad, "imports that cross a layer boundary:\n" + "\n".join(bad)


def test_the_checker_finds_a_forbidden_import(tmp_path: Path) -> None:
    files = {
        "coe/__init__.py": "",
        "coe/gateway/__init__.py": "from coe.gateway.app import create_app\n",
        "coe/gateway/app.py": "import fastapi\n",
        "coe/batch/__init__.py": "",
        "coe/batch/worker.py": (
            "from typing import TYPE_CHECKING\n"
            "from coe.store import keys\n"
            "if TYPE_CHECKING:\n"
            "    from coe.gateway import deps\n"
            "def run():\n"
            "    from ..gateway.app import (\n"
            "        create_app,\n"
            "    )\n"
        ),
        "coe/store/__init__.py": "from . import keys\nfrom coe import gateway\n",
        "coe/store/keys.py": "import starlette.responses\n",
        # up-layer imports that only rules with no exemptions catch
        "coe/runtime.py": "def serve():\n    from coe.gateway.app import create_app\n",
        "coe/routing/live.py": "from coe.pipeline import Engine\n",
        "coe/pool/service.py": "from fastapi import FastAPI\n",
        "coe/pool_service/app.py": "from fastapi import FastAPI\nimport httpx\n",
        "coe/cli/__init__.py": "import httpx\nfrom coe.cli.batch import batch_group\n",
        "coe/cli/batch.py": "import httpx\nfrom coe.ray_batch import run_on_ray\n",
        "coe/console/api.py": "from coe.gateway import deps\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    found = violations(imports_of(tmp_path / "coe"), RULES)

    def hits(prefix: str) -> list[str]:
        return [f for f in found if f.startswith(prefix)]

    assert hits("coe/batch/worker.py:4: from coe.gateway import deps")
    assert hits("coe/batch/worker.py:6: from ..gateway.app import ( create_app, )")
    assert hits("coe/store/__init__.py:2: from coe import gateway")
    assert hits("coe/store/keys.py:1: import starlette.responses")
    assert not hits("coe/gateway")  # the gateway may import itself and FastAPI
    assert not [f for f in found if "import keys" in f]
    assert hits("coe/runtime.py:2: from coe.gateway.app import create_app")
    assert hits("coe/routing/live.py:1: from coe.pipeline import Engine")
    assert hits("coe/pool/service.py:1: from fastapi import FastAPI")
    assert hits("coe/cli/__init__.py:1: import httpx")
    assert hits("coe/console/api.py:1: from coe.gateway import deps")
    assert not hits("coe/pool_service")  # a front: FastAPI, and httpx for its relay
    assert not hits("coe/cli/batch.py")  # a client of our gateway, and the CLI starts fronts
    assert not hits("coe/cli/__init__.py:2")


def test_every_module_is_in_one_layer() -> None:
    """A new package is placed in the house (LAYERS, docs/architecture.md) before it counts."""
    names = {imp.module for imp in imports_of(COE)} | {
        _module_name(path, COE)[0] for path in COE.rglob("*.py")
    }
    placed = {
        name: [layer for layer, packages in LAYERS.items() if _within(name, packages)]
        for name in names - {"coe"}
    }
    assert {name: layers for name, layers in placed.items() if len(layers) != 1} == {}


def test_only_the_batch_client_of_the_cli_may_speak_http() -> None:
    cli = {_module_name(path, COE)[0] for path in (COE / "cli").glob("*.py")}
    off_http = {name for name in cli if _within(name, CLI_OFF_HTTP)}
    assert cli - off_http == {"coe.cli.batch"}
