"""Find router classes by type name: files in `routers/`, then the `coe.routers` entry points.

Built-in strategies live in `routers/` and load through the same path as
third-party ones, so there is no central if/elif to edit for a new router.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coe.errors import ConfigError
from coe.routing.base import Router, RouterDeps

log = logging.getLogger(__name__)


class RouterRegistry:
    def __init__(self) -> None:
        self._types: dict[str, type[Router]] = {}

    def register(self, cls: type[Router], origin: str = "") -> None:
        name = getattr(cls, "type_name", None)
        if not name:
            raise ConfigError(f"{origin or cls.__name__}: router class has no type_name")
        if name in self._types and self._types[name] is not cls:
            raise ConfigError(f"{origin}: router type {name!r} is defined twice")
        self._types[name] = cls

    def load_dir(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ConfigError(f"{directory}: routers directory does not exist")
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            for cls in _router_classes(_load_module(path)):
                self.register(cls, origin=str(path))

    def load_entry_points(self) -> None:
        for ep in entry_points(group="coe.routers"):
            cls = ep.load()
            if isinstance(cls, type) and issubclass(cls, Router):
                self.register(cls, origin=f"entry point {ep.name}")

    def types(self) -> list[str]:
        return sorted(self._types)

    def get(self, type_name: str) -> type[Router]:
        try:
            return self._types[type_name]
        except KeyError:
            known = ", ".join(self.types()) or "none"
            raise ConfigError(f"unknown router type {type_name!r} (known: {known})") from None

    def build(self, name: str, type_name: str, params: dict[str, Any], deps: RouterDeps) -> Router:
        cls = self.get(type_name)
        try:
            parsed = cls.Params.model_validate(params)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: "
                f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
                for e in err.errors()
            )
            raise ConfigError(f"routers.{name}.params ({type_name}): {problems}") from None
        return cls(name, parsed, deps)


PLUGIN_ROOT = "coe_router_plugins"


def _folder_package(folder: Path) -> str:
    """A package over a plug-in folder, so plug-ins can share private helpers with
    `from ._helper import x`; the folder's hash keeps two folders' `keyword.py` apart."""
    if PLUGIN_ROOT not in sys.modules:
        root = types.ModuleType(PLUGIN_ROOT)
        root.__path__ = []
        sys.modules[PLUGIN_ROOT] = root
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    name = f"{PLUGIN_ROOT}.p{digest}"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        package.__package__ = name
        sys.modules[name] = package
    return name


def _load_module(path: Path) -> Any:
    mod_name = f"{_folder_package(path.parent)}.{path.stem}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot load router module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[mod_name]
        raise ConfigError(f"{path}: failed to import router module: {err}") from err
    return module


def _router_classes(module: Any) -> list[type[Router]]:
    out = []
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Router)
            and value is not Router
            and value.__module__ == module.__name__
            and "type_name" in vars(value)
        ):
            out.append(value)
    return out
