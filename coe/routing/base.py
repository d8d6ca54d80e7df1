"""The router contract: one class per strategy, one async method to implement.

A router is built once at start-up from its validated params and the shared
`RouterDeps`; `route()` is called per query with a `RouteContext` that carries
the live expert registry, the request's needs, its caller and the pools' published state.
Routers never see the web request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from coe.errors import ConfigError
from coe.routing.context import NO_POOLS, Caller, PoolView, QueryInfo
from coe.routing.decision import RouteDecision
from coe.routing.needs import RequestNeeds

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
    routers: Mapping[str, Router] = field(default_factory=dict)  # the engine's, by name


@dataclass
class RouteContext:
    """Per-query view of the world: which experts exist right now, what the request needs
    (`needs`), who sent it (`caller`: API key id, conversation) and what each pool service
    last published (`pools`, pool name -> `PoolView`; empty without pools).

    In `route_batch`, `each[i]` holds the i-th query's own needs and caller (`at(i)` is the
    i-th query's whole context); `needs` and `caller` are then the defaults."""

    experts: Mapping[str, ExpertSpec]
    default_expert: str
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    request_id: str | None = None
    needs: RequestNeeds = field(default_factory=RequestNeeds)
    caller: Caller = field(default_factory=Caller)
    pools: Mapping[str, PoolView] = field(default_factory=lambda: NO_POOLS)
    each: Sequence[QueryInfo] = ()

    def at(self, i: int) -> RouteContext:
        """The context of the i-th query of a batch (this one when it carries no `each`)."""
        if not self.each:
            return self
        info = self.each[i]
        return replace(self, needs=info.needs, caller=info.caller, each=())


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

    def wraps(self) -> Sequence[str]:
        """The other routers of the engine this one calls, by name (a router that wraps
        others says so from its params). Checked when the engine is built: each must exist,
        none may be this router, and wrapping may not go round in a circle."""
        return ()

    def wrapped(self, name: str) -> Router:
        """Router `name` of the same engine, one this router `wraps()`; built (and, by the
        first query, set up) by the engine. Wrapped routers are set up before their wrappers."""
        if name not in self.wraps():
            raise ConfigError(
                f"router {self.name!r} asks for router {name!r}, which its wraps() does not name"
            )
        return self.deps.routers[name]

    @abstractmethod
    async def route(self, query: str, ctx: RouteContext) -> RouteDecision: ...

    async def route_batch(self, queries: Sequence[str], ctx: RouteContext) -> list[RouteDecision]:
        """Route many queries; strategies that can batch (embeddings) override this."""
        return [await self.route(q, ctx.at(i)) for i, q in enumerate(queries)]
