"""The layers of coe (docs/architecture.md), enforced on the import graph of `coe/`.

Every import counts: relative ones, those inside functions and those under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

COE = Path(__file__).resolve().parents[1] / "coe"

ENGINE = ("coe.pipeline", "coe.aggregation", "coe.dispatch", "coe.routing", "coe.store")
FRONTS = ("coe.batch", "coe.gateway", "coe.cli")


@dataclass(frozen=True)
class Rule:
    """Modules under `importers` (except those under `exempt`) never import `forbidden`."""

    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    exempt: tuple[str, ...] = ()

    def __str__(self) -> str:
        unless = f" (except {', '.join(self.exempt)})" if self.exempt else ""
        return f"{'|'.join(self.importers)}{unless} -/-> {'|'.join(self.forbidden)}"


# Top of the stack first: a layer may import what is below it, never what is above.
RULES = [
    #    who                    never imports                 unless it is in
    Rule(("coe",),              ("coe.gateway",),             ("coe.gateway", "coe.cli")),
    Rule(("coe",),              ("fastapi", "starlette"),     ("coe.gateway", "coe.testing",
                                                                  "coe.pool_service",
                                                                  "coe.console", "coe.web")),
    Rule(("coe",),              ("coe.web",),                 ("coe.gateway", "coe.console",
                                                                  "coe.pool_service",
                                                                  "coe.web")),
    Rule(("coe.batch",),        ("coe.gateway",)),
    Rule(ENGINE,                FRONTS),
    Rule(("coe.routing",),      ("coe.eval",)),
    Rule(("coe.experts",),      ("coe.pool",)),
    # Batch answers only through the engine: no expert client, no fallback of its own.
    Rule(("coe.batch",),        ("coe.dispatch", "httpx")),
    # Fronts and routers reach experts through the engine or `coe.dispatch`, never raw HTTP
    # (`coe batch` is a client of our own gateway, not of an expert).
    Rule(("coe.cli", "coe.routing", "coe.aggregation"), ("httpx",), ("coe.cli.batch",)),
]  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. coe.batch.worker
    path: str  # its file, e.g. coe/batch/worker.py
    line: int
    target: str  # what it imports, absolute, e.g. coe.gateway.app.create_app
    source: str  # the statement as written


def _within(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


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
            if (
                _within(imp.module, rule.importers)
                and not _within(imp.module, rule.exempt)
                and _within(imp.target, rule.forbidden)
            ):
                found.append(f"{imp.path}:{imp.line}: {imp.source}   [{rule}]")
    return sorted(set(found))


@pytest.fixture(scope="module")
def coe_imports() -> list[Import]:
    return list(imports_of(COE))


@pytest.mark.parametrize("rule", RULES, ids=str)
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
