"""The seam between the pool (which experts, when) and a swap mechanism (how).

A controller makes one expert resident or not; one small class per mechanism, each a
plug-in (`coe.pool.registry`) with its own `Params` model for the pool's `params:`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from coe.experts.schema import ExpertSpec, PoolSpec


class ExpertState(StrEnum):
    STOPPED = "stopped"  # nothing held: a cold start is needed
    ASLEEP = "asleep"  # weights parked off the device: a fast wake
    LOADING = "loading"
    RESIDENT = "resident"
    UNLOADING = "unloading"
    UNAVAILABLE = "unavailable"  # its last swap failed; skipped until retry_after_s


# States that hold one of the pool's C places.
OCCUPYING = frozenset({ExpertState.LOADING, ExpertState.RESIDENT, ExpertState.UNLOADING})


class ControllerParams(BaseModel):
    """Base of a controller's `Params`: unknown keys are refused, values are fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class PoolContext:
    """What a controller is built from besides its params."""

    name: str
    spec: PoolSpec
    experts: Sequence[ExpertSpec]  # the pool's members
    http: httpx.AsyncClient  # shared, for controllers that talk to servers


class SwapController(ABC):
    """Loads and unloads experts; raises a CoeError (or lets an I/O error out) on failure.

    Subclasses set `kind` (the name `pools.<name>.controller` uses) and `Params`, and
    implement `from_config`, `load`, `unload`, `resident` (what is loaded now, asked of the
    backend) and `upstream` (where a resident expert answers).
    """

    kind: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = ControllerParams
    unloaded_state: ClassVar[ExpertState] = ExpertState.STOPPED

    # -- what `coe deploy` checks against docker-compose.yml (coe/deploy/pools.py asks) ---
    # The param naming each member's own vLLM server (`{expert: url}`), if the kind has one.
    servers_param: ClassVar[str | None] = None
    # Its servers must run with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1.
    needs_sleep_mode: ClassVar[bool] = False

    @classmethod
    def driven_urls(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(param path, URL) of the servers the kind drives for the pool as a whole, beside
        `servers_param`'s; by default every http(s) URL anywhere in its params."""
        return [
            (path, value)
            for path, value in _walk(params)
            if isinstance(value, str) and value.startswith(("http://", "https://"))
        ]

    @classmethod
    @abstractmethod
    def from_config(cls, params: Any, pool: PoolContext) -> SwapController:
        """Build from validated `Params` (an instance of `cls.Params`) and the pool; check
        what the params cannot check alone (every member covered), do no I/O."""

    @property
    def max_capacity(self) -> int | None:
        """The most experts the mechanism can hold at once, if it has a limit of its own."""
        return None

    async def start(self) -> set[str]:
        """Probe the backend; returns the experts already resident."""
        return await self.resident()

    @abstractmethod
    async def load(self, expert: str) -> None: ...

    @abstractmethod
    async def unload(self, expert: str) -> None: ...

    @abstractmethod
    async def resident(self) -> set[str]:
        """The experts loaded now, asked of the backend, not remembered: after a failed swap
        the pool keeps the expert's place until this no longer lists it."""

    @abstractmethod
    def upstream(self, expert: str) -> str:
        """The base URL where the expert answers OpenAI requests while it is resident."""

    async def close(self) -> None:  # noqa: B027 - most controllers start nothing
        """Release what the controller started (processes); adapters and sleepers stay."""


def _walk(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value
