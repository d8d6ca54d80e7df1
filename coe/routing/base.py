"""The router contract: one class per strategy, one async method to implement.

A router is built once at start-up from its validated params and the shared
`RouterDeps`; `route()` is called per query with a `RouteContext` that carries
the live expert registry. Routers never see the web request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from coe.routing.decision import RouteDecision

if TYPE_CHECKING:
    from coe.experts.schema import CoeConfig, ExpertSpec
    from coe.store.base import Store


class ChatCaller(Protocol):
    """How a router asks an LLM for something (keywords, an instruction)."""

    async def __call__(self, expert: str, messages: list[dict[str, Any]], **params: Any) -> str: ...


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class RouterDeps:
    """Shared, long-lived things a router may use; built once in the app factory."""

    config: CoeConfig
    store: Store
    base_dir: Path
    chat: ChatCaller | None = None
    encoders: Any = None  # coe.routing.encoders.EncoderCache; typed loosely to keep imports light


@dataclass
class RouteContext:
    """Per-query view of the world: which experts exist right now."""

    experts: Mapping[str, ExpertSpec]
    default_expert: str
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    request_id: str | None = None


class Router(ABC):
    """A routing strategy. Subclasses set `type_name` and `Params`, implement `route`."""

    type_name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, name: str, params: BaseModel, deps: RouterDeps):
        self.name = name
        self.params = params
        self.deps = deps

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models and artefacts; called once before the first query."""

    @abstractmethod
    async def route(self, query: str, ctx: RouteContext) -> RouteDecision: ...

    async def route_batch(self, queries: Sequence[str], ctx: RouteContext) -> list[RouteDecision]:
        """Route many queries; strategies that can batch (embeddings) override this."""
        return [await self.route(q, ctx) for q in queries]
