"""Build the real router classes offline: a config whose experts are the data's models.

Evaluation uses the same plug-in loader and classes that serve (the config's
`routers_dirs`, relative to `base_dir`, and the `coe.routers` entry points), fitted on a
training split only; no HTTP endpoints are called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coe.experts.schema import CoeConfig
from coe.routing.base import RouteContext, Router, RouterDeps
from coe.routing.data import ModelInfo
from coe.routing.encoders import EncoderCache
from coe.routing.registry import RouterRegistry
from coe.store.embedded import EmbeddedStore


def offline_config(
    experts: Sequence[str],
    default: str,
    models: dict[str, ModelInfo] | None = None,
    categories: dict[str, list[str]] | None = None,
    routers_dirs: Sequence[str] | None = None,
) -> CoeConfig:
    """`routers_dirs`: where the router plug-ins are (default: the config default, `routers`
    relative to the base folder the routers are built in)."""
    models = models or {}
    dirs = {} if routers_dirs is None else {"routers_dirs": list(routers_dirs)}
    return CoeConfig.model_validate(
        {
            **dirs,
            "experts": [
                {
                    "name": e,
                    "model": e,
                    "endpoints": ["http://127.0.0.1:9"],
                    "description": models[e].description if e in models else "",
                    "cost": models[e].cost if e in models else 0.0,
                }
                for e in experts
            ],
            "default_expert": default,
            "categories": categories or {},
        }
    )


def context(config: CoeConfig) -> RouteContext:
    return RouteContext(
        experts={e.name: e for e in config.experts},
        default_expert=config.default_expert,
        categories=dict(config.categories),
    )


def build_router(
    type_name: str,
    params: dict[str, Any],
    config: CoeConfig,
    encoders: EncoderCache,
    base_dir: Path | None = None,
    name: str | None = None,
) -> Router:
    base = base_dir or Path.cwd()
    registry = RouterRegistry.load(config.routers_dirs, base)
    deps = RouterDeps(config=config, store=EmbeddedStore(), base_dir=base, encoders=encoders)
    return registry.build(name or type_name, type_name, params, deps)
