"""Find router classes by type name: files in `routers_dirs`, then the `coe.routers` entry points.

Built-in strategies live in `routers/` and load through the same path as
third-party ones (`coe.plugins`), so there is no central if/elif to edit for a new router.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from coe.plugin_families import ROUTERS
from coe.plugins import Plugins, parse_params
from coe.routing.base import Router, RouterDeps

if TYPE_CHECKING:
    from coe.experts.schema import CoeConfig


class RouterRegistry(Plugins[Router]):
    def __init__(self) -> None:
        f = ROUTERS
        super().__init__(Router, f.attr, group=f.group, what=f.what, label=f.label)

    def types(self) -> list[str]:
        return self.names()

    @classmethod
    def load(cls, dirs: Sequence[str], base_dir: Path) -> RouterRegistry:
        """The router types in `dirs` (relative to `base_dir`) and the installed entry points."""
        registry = cls()
        registry.load_builtins(ROUTERS)
        for folder in dirs:
            path = Path(folder)
            registry.load_dir(path if path.is_absolute() else base_dir / path)
        registry.load_entry_points()
        return registry

    def resolve(
        self, name: str, type_name: str, params: dict[str, Any]
    ) -> tuple[type[Router], BaseModel]:
        """Router `name`'s class and its params, checked by the class's `Params`; no I/O."""
        cls = self.get(type_name)
        return cls, parse_params(cls.Params, params, f"routers.{name}.params ({type_name})")

    def build(self, name: str, type_name: str, params: dict[str, Any], deps: RouterDeps) -> Router:
        cls, parsed = self.resolve(name, type_name, params)
        return cls(name, parsed, deps)


def router_specs(config: CoeConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every router a config builds: name -> (type, params). `default` may be named in a
    pipeline without being declared: it needs no params."""
    specs = {name: (spec.type, spec.params) for name, spec in config.routers.items()}
    specs.setdefault("default", ("default", {}))
    return specs
