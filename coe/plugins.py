"""Plug-in classes by name: built-ins, the `*.py` files of a folder, an entry-point group.

Every family (routers, swap controllers, aggregation strategies, encoder kinds, batch
engines; `coe.plugin_families`) comes in this way. Built-ins load through the function that
loads an entry point's target, so a built-in and a third party's plug-in behave alike.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from coe.errors import ConfigError
from coe.plugin_families import Family, builtin

T = TypeVar("T")

PLUGIN_ROOT = "coe_plugins"


class Plugins(Generic[T]):
    """Subclasses of `base` that set the class attribute `attr` (their name), by that name.

    `what` and `label` word the errors: "unknown router type 'x'", "swap controllers
    directory does not exist".
    """

    def __init__(self, base: type[Any], attr: str, group: str, what: str, label: str):
        # `type[Any]`, not `type[T]`: the bases (Router, SwapController) are abstract.
        self.base = base
        self.attr = attr
        self.group = group
        self.what = what
        self.label = label
        self._classes: dict[str, type[T]] = {}

    @classmethod
    def of(cls, family: Family) -> Plugins[T]:
        """An empty registry for one row of the family table (its base imported now)."""
        base = load_object(family.base)
        return cls(base, family.attr, family.group, family.what, family.label)

    def load_builtins(self, family: Family) -> None:
        """The family's built-ins, each loaded as an entry point's target would be."""
        for entry in family.builtins:
            name, target = builtin(entry)
            cls = self.load_target(target, origin=f"built-in {name} ({target})")
            if getattr(cls, self.attr, None) != name:
                raise ConfigError(f"built-in {name} ({target}): its {self.attr} is not {name!r}")

    def register(self, cls: type[T], origin: str = "") -> None:
        name = getattr(cls, self.attr, None)
        if not name:
            raise ConfigError(f"{origin or cls.__name__}: {self.what} class has no {self.attr}")
        if name in self._classes and self._classes[name] is not cls:
            raise ConfigError(f"{origin}: {self.what} {self.label} {name!r} is defined twice")
        self._classes[name] = cls

    def load_dir(self, directory: Path) -> None:
        """Every class defined in the folder's `*.py` files; files starting with `_` are
        helpers the others may import relatively (`from ._shared import x`)."""
        if not directory.is_dir():
            raise ConfigError(f"{directory}: {self.what}s directory does not exist")
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            module = _load_module(path, self.what)
            for cls in _classes_in(module, self.base, self.attr):
                self.register(cls, origin=str(path))

    def load_entry_points(self) -> None:
        for ep in entry_points(group=self.group):
            self.load_target(ep.value, origin=f"entry point {ep.name} ({ep.value})")

    def load_target(self, target: str, origin: str) -> type[T]:
        """Register the class `module:attr` names: an entry point's value or a built-in."""
        try:
            cls = load_object(target)
        except ConfigError as err:
            raise ConfigError(f"{origin}: {err.message}") from None
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ConfigError(f"{origin}: not a {self.what} class")
        self.register(cls, origin=origin)
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(
                f"unknown {self.what} {self.label} {name!r} (known: {known})"
            ) from None


def load_object(target: str) -> Any:
    """The object `module:attr` (or `module:outer.inner`) names; extras (`[x]`) are ignored."""
    module_name, _, attr = target.partition("[")[0].strip().partition(":")
    try:
        value: Any = importlib.import_module(module_name.strip())
        for part in attr.strip().split(".") if attr.strip() else ():
            value = getattr(value, part)
    except Exception as err:
        raise ConfigError(f"failed to import: {err}") from err
    return value


def parse_params(model: type[BaseModel], params: dict[str, Any], where: str) -> BaseModel:
    """A plug-in's params through its own `Params` model; a ConfigError names `where` (the
    config path) and every problem, e.g. `routers.kw.params (keyword): expert: Field required`."""
    try:
        return model.model_validate(params)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in err.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


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


def _load_module(path: Path, what: str) -> Any:
    mod_name = f"{_folder_package(path.parent)}.{path.stem}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot load {what} module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[mod_name]
        raise ConfigError(f"{path}: failed to import {what} module: {err}") from err
    return module


def _classes_in(module: Any, base: type[Any], attr: str) -> list[type[Any]]:
    """Classes the module defines itself (not imports) that name themselves with `attr`."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, base)
        and value is not base
        and value.__module__ == module.__name__
        and attr in vars(value)
    ]
