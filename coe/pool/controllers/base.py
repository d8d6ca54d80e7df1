"""The seam between the pool (which experts, when) and a swap mechanism (how).

A controller makes one expert resident or not; one small class per mechanism.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

import httpx

from coe.pool.config import PoolSpec

if TYPE_CHECKING:
    from coe.experts.schema import ExpertSpec


class ExpertState(StrEnum):
    STOPPED = "stopped"  # nothing held: a cold start is needed
    ASLEEP = "asleep"  # weights parked off the device: a fast wake
    LOADING = "loading"
    RESIDENT = "resident"
    UNLOADING = "unloading"
    UNAVAILABLE = "unavailable"  # its last swap failed; skipped until retry_after_s


# States that hold one of the pool's C places.
OCCUPYING = frozenset({ExpertState.LOADING, ExpertState.RESIDENT, ExpertState.UNLOADING})


class SwapController(ABC):
    """Loads and unloads experts; raises a CoeError (or lets an I/O error out) on failure."""

    kind: ClassVar[str]
    unloaded_state: ClassVar[ExpertState] = ExpertState.STOPPED

    @classmethod
    @abstractmethod
    def from_spec(
        cls, spec: PoolSpec, experts: Sequence[ExpertSpec], http: httpx.AsyncClient
    ) -> SwapController:
        """Build from the pool's config; check params here, do no I/O."""

    @property
    def max_capacity(self) -> int | None:
        """The most experts the mechanism can hold at once, if it has a limit of its own."""
        return None

    async def start(self) -> set[str]:
        """Probe the backend; returns the experts already resident."""
        return set()

    @abstractmethod
    async def load(self, expert: str) -> None: ...

    @abstractmethod
    async def unload(self, expert: str) -> None: ...

    async def close(self) -> None:  # noqa: B027 - most controllers start nothing
        """Release what the controller started (processes); adapters and sleepers stay."""
