"""The only FastAPI code: app factory, endpoints, error handling (wire models: `coe.protocol`)."""

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
