"""The gateway front: app factory and one module per endpoint family (wire models: `coe.protocol`;
what it shares with the console and the pool service: `coe.web`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coe.gateway.app import create_app


def __getattr__(name: str) -> Any:
    # Imported lazily: `import coe.gateway` alone builds nothing and pulls in no app.
    if name == "create_app":
        from coe.gateway.app import create_app

        return create_app
    raise AttributeError(name)


__all__ = ["create_app"]
