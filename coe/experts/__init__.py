"""Experts as data: the schema of experts.yaml and the registry that serves it."""

from coe.experts.schema import (
    CoeConfig,
    ExpertLimits,
    ExpertSpec,
    LocalServer,
    PipelineSpec,
    PoolSpec,
    RouterSpec,
    load_config,
)

__all__ = [
    "CoeConfig",
    "ExpertLimits",
    "ExpertSpec",
    "LocalServer",
    "PipelineSpec",
    "PoolSpec",
    "RouterSpec",
    "load_config",
]
