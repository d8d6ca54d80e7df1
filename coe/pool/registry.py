"""Swap controllers by kind: the `coe.swap_controllers` entry points and plug-in folders.

The built-in kinds (static, process, lora, sleep) are rows of `coe.plugin_families`, loaded
by the function that loads an entry point's target, beside a third party's kinds and the
`controllers_dirs` files. (They are entry points of this package too: the same class seen
twice is one kind.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from coe.errors import ConfigError
from coe.plugin_families import SWAP_CONTROLLERS
from coe.plugins import Plugins, parse_params
from coe.pool.controllers.base import PoolContext, SwapController

if TYPE_CHECKING:
    from coe.experts.schema import PoolSpec

GROUP = SWAP_CONTROLLERS.group


class ControllerRegistry(Plugins[SwapController]):
    def __init__(self) -> None:
        f = SWAP_CONTROLLERS
        super().__init__(SwapController, f.attr, group=f.group, what=f.what, label=f.label)

    @classmethod
    def load(cls, dirs: Sequence[str] = (), base_dir: Path | None = None) -> ControllerRegistry:
        """The installed kinds plus those in `dirs` (relative to `base_dir`, else the cwd)."""
        registry = cls()
        registry.load_builtins(SWAP_CONTROLLERS)
        for folder in dirs:
            path = Path(folder)
            registry.load_dir(path if path.is_absolute() or base_dir is None else base_dir / path)
        registry.load_entry_points()
        return registry

    def resolve(self, name: str, spec: PoolSpec) -> tuple[type[SwapController], BaseModel]:
        """Pool `name`'s controller class and its params, checked by the class's `Params`."""
        try:
            cls = self.get(spec.controller)
        except ConfigError as err:
            raise ConfigError(f"pools.{name}.controller: {err.message}") from None
        params = parse_params(cls.Params, spec.params, f"pools.{name}.params ({spec.controller})")
        return cls, params

    def build(self, pool: PoolContext) -> SwapController:
        cls, params = self.resolve(pool.name, pool.spec)
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise ConfigError(
                f"pools.{pool.name}.controller: swap controller kind {pool.spec.controller!r} "
                f"({cls.__module__}.{cls.__qualname__}) does not implement {', '.join(missing)}"
            )
        return cls.from_config(params, pool)
