"""The parts of a routing context that come from outside routing: who sent the request (and in
which conversation), and what each pool service last published, as read-only views so
routers never hold the gateway's or the dispatcher's objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from coe.routing.needs import RequestNeeds


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the authenticated API key's id (None when keys are not
    required; a batch line carries its job's owner), and the conversation it belongs to (the
    request policy's `coe.conversation`, None when it names none)."""

    key_id: str | None = None
    conversation: str | None = None


@dataclass(frozen=True)
class QueryInfo:
    """One query's own part of a context: what it needs, who sent it."""

    needs: RequestNeeds = field(default_factory=RequestNeeds)
    caller: Caller = field(default_factory=Caller)


@dataclass(frozen=True)
class PooledExpert:
    """One expert as its pool service published it (`coe.pool.state.pool_state`)."""

    model: str = ""
    state: str = ""  # an ExpertState value: resident, loading, unloaded, unavailable, ...
    queue: int = 0  # requests waiting for it
    active: int = 0  # calls admitted and not finished
    retry_in_s: float | None = None  # unavailable: when its pool tries it again


@dataclass(frozen=True)
class PoolView:
    """A pool's last published state; `experts` maps each member to its state."""

    controller: str = ""
    capacity: int = 0
    occupied: int = 0
    experts: Mapping[str, PooledExpert] = field(default_factory=lambda: MappingProxyType({}))

    def resident(self) -> list[str]:
        return [name for name, e in self.experts.items() if e.state == "resident"]


NO_POOLS: Mapping[str, PoolView] = MappingProxyType({})


@runtime_checkable
class PoolStateSource(Protocol):
    """What publishes pool states to the engine (`coe.dispatch.liveness.PoolStates`)."""

    def states(self) -> Mapping[str, Mapping[str, Any]]: ...


def pool_view(state: Mapping[str, Any]) -> PoolView:
    """A pool's published JSON as a view; missing or malformed fields take their defaults."""
    experts = state.get("experts")
    members = {
        str(name): _expert(e)
        for name, e in (experts.items() if isinstance(experts, Mapping) else ())
        if isinstance(e, Mapping)
    }
    return PoolView(
        controller=str(state.get("controller") or ""),
        capacity=_int(state.get("capacity")),
        occupied=_int(state.get("occupied")),
        experts=MappingProxyType(members),
    )


class PoolViews:
    """Pool name -> view of what a source last published, rebuilt only when a pool
    published anew (a context is built per request)."""

    def __init__(self, source: PoolStateSource | None):
        self.source = source
        self._seen: dict[str, Mapping[str, Any]] = {}  # held, so identity means unchanged
        self._views: Mapping[str, PoolView] = NO_POOLS

    def current(self) -> Mapping[str, PoolView]:
        if self.source is None:
            return NO_POOLS
        states = self.source.states()
        same = states.keys() == self._seen.keys() and all(
            states[name] is self._seen[name] for name in states
        )
        if not same:
            self._seen = dict(states)
            self._views = MappingProxyType({n: pool_view(s) for n, s in states.items()})
        return self._views


def _expert(e: Mapping[str, Any]) -> PooledExpert:
    retry = e.get("retry_in_s")
    return PooledExpert(
        model=str(e.get("model") or ""),
        state=str(e.get("state") or ""),
        queue=_int(e.get("queue")),
        active=_int(e.get("active")),
        retry_in_s=float(retry) if isinstance(retry, int | float) else None,
    )


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
