"""The built-in swap controllers, one file per kind: static, process, lora, sleep (GPU only).

Nothing here lists them: they are registered as `coe.swap_controllers` entry points in
pyproject.toml and found by `coe.pool.registry`, like any third-party kind.
"""

from coe.pool.controllers.base import (
    OCCUPYING,
    ControllerParams,
    ExpertState,
    PoolContext,
    SwapController,
)

__all__ = ["OCCUPYING", "ControllerParams", "ExpertState", "PoolContext", "SwapController"]
