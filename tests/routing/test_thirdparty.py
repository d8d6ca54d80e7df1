"""A router from its own package: pip-installed, found by its `coe.routers` entry point, routing.

The package under `thirdparty/` imports nothing but `coe.routing`, so this also proves the
curated surface is enough to write a router.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coe.dispatch import ExpertClient
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import Target, build_engine
from coe.routing.registry import RouterRegistry
from coe.store.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).parent / "thirdparty" / "coe-keyword-router"
MODULE = "coe_keyword_router"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package installed into a private folder that is on sys.path for these tests only."""
    root = tmp_path_factory.mktemp("thirdparty")
    source = root / "src"
    shutil.copytree(PACKAGE, source)  # the build writes egg-info beside the sources
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"pip could not install {PACKAGE.name}:\n{done.stdout}{done.stderr}")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()


def test_the_package_uses_only_the_curated_surface() -> None:
    tree = ast.parse((PACKAGE / f"{MODULE}.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("coe")
    }
    assert imported == {"coe.routing"}


def test_entry_point_registers_the_router(site: Path) -> None:
    plugins = RouterRegistry()
    plugins.load_entry_points()
    cls = plugins.get("keyword")
    assert cls.__module__ == MODULE
    assert Path(sys.modules[MODULE].__file__ or "").parent == site


async def test_engine_routes_with_the_installed_router(site: Path, tmp_path: Path) -> None:
    config = CoeConfig.model_validate(
        {
            "experts": [
                {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"]}
                for n in ("gen", "math", "code")
            ],
            "default_expert": "gen",
            "routers": {
                "words": {
                    "type": "keyword",
                    "params": {
                        "keywords": {"math": ["integral", "prime"], "code": ["python", "bug"]}
                    },
                }
            },
            "pipelines": {"auto": {"routers": ["words", "default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    engine = await build_engine(config, registry, ExpertClient(None), store, tmp_path)  # type: ignore[arg-type]

    hit = await engine.decide(Target(pipeline="auto"), "Is the integral of a prime a bug?")
    assert hit.router == "words" and hit.details["hits"] == {"math": 2, "code": 1}
    assert hit.ranked == ["math", "code"] and hit.chosen == ["math"]

    miss = await engine.decide(Target(pipeline="auto"), "hello there")
    assert miss.chosen == ["gen"] and "fell back after words" in miss.reason
