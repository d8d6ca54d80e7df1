"""Swap controllers by name: static, process, lora, sleep (GPU only)."""

from coe.pool.controllers.base import OCCUPYING, ExpertState, SwapController
from coe.pool.controllers.lora import LoraController
from coe.pool.controllers.process import ProcessController
from coe.pool.controllers.sleep import SleepController, sleep_refusal
from coe.pool.controllers.static import StaticController

CONTROLLERS: dict[str, type[SwapController]] = {
    c.kind: c for c in (StaticController, ProcessController, LoraController, SleepController)
}

__all__ = [
    "CONTROLLERS",
    "OCCUPYING",
    "ExpertState",
    "LoraController",
    "ProcessController",
    "SleepController",
    "StaticController",
    "SwapController",
    "sleep_refusal",
]
