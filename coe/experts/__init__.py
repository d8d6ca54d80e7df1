"""Experts as data: the schema of experts.yaml and the registry that serves it."""

from coe.experts.schema import (
    CoeConfig,
    ExpertLimits,
    ExpertSpec,
    PipelineSpec,
    RouterSpec,
    load_config,
)

__all__ = [
    "CoeConfig",
    "ExpertLimits",
    "ExpertSpec",
    "PipelineSpec",
    "RouterSpec",
    "load_config",
]
