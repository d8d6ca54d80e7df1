"""Routers that wrap other routers of their engine: checked once all are built, so a wrong
name is a ConfigError at start-up, and set up after the routers they call."""

from __future__ import annotations

from collections.abc import Mapping

from coe.errors import ConfigError
from coe.routing.base import Router


def setup_order(routers: Mapping[str, Router]) -> list[str]:
    """The routers in the order to set them up: each after the routers it wraps, otherwise as
    configured. Wrapping a router that does not exist, itself, or in a circle is a ConfigError."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            circle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ConfigError(f"routers wrap each other in a circle: {circle}")
        visiting.append(name)
        for inner in routers[name].wraps():
            if inner == name:
                raise ConfigError(f"router {name!r} cannot wrap itself")
            if inner not in routers:
                raise ConfigError(
                    f"router {name!r} wraps router {inner!r}, which does not exist; "
                    f"the routers are: {', '.join(sorted(routers))}"
                )
            visit(inner)
        visiting.pop()
        order.append(name)

    for name in routers:
        visit(name)
    return order
