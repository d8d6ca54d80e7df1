"""Aggregation strategies are plug-ins: the built-ins come from the family table, a config's
strategy name is checked when the engine is built and by `coe check-config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe.aggregation import Strategy, StrategyRegistry
from coe.dispatch import ExpertClient
from coe.errors import ConfigError
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import build_engine
from coe.runtime import check_plugins
from coe.store.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[2]
UNKNOWN = (
    r"pipelines\.p\.aggregation\.strategy: unknown aggregation strategy 'mean' "
    r"\(known: best, first, synthesize, vote\)"
)


def config(strategy: str) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:9"]}],
            "default_expert": "a",
            "routers_dirs": [str(REPO / "routers")],
            "default_pipeline": "p",
            "pipelines": {"p": {"routers": ["default"], "aggregation": {"strategy": strategy}}},
        }
    )


def test_the_built_ins_are_the_four_strategies() -> None:
    registry = StrategyRegistry.builtins()
    assert registry.names() == ["best", "first", "synthesize", "vote"]
    assert all(issubclass(registry.get(n), Strategy) for n in registry.names())
    assert registry.get("first").until_first and not registry.get("vote").until_first


def test_check_config_names_an_unknown_strategy(tmp_path: Path) -> None:
    check_plugins(config("vote"), tmp_path)
    with pytest.raises(ConfigError, match=UNKNOWN):
        check_plugins(config("mean"), tmp_path)


async def test_the_engine_is_not_built_with_an_unknown_strategy(tmp_path: Path) -> None:
    cfg = config("mean")
    store = EmbeddedStore()
    client = ExpertClient(None)  # type: ignore[arg-type]  # never called
    with pytest.raises(ConfigError, match=UNKNOWN):
        await build_engine(cfg, ExpertRegistry(store), client, store, tmp_path)
