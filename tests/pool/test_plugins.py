"""Swap controllers as plug-ins: the built-ins by entry point, others by path or entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
import yaml

from coe.errors import ConfigError
from coe.experts.schema import load_config
from coe.pool import ControllerRegistry, build_pools

PLUGIN = """
from pydantic import Field

from coe.pool import ControllerParams, PoolContext, SwapController

from ._shared import PREFIX


class CountingParams(ControllerParams):
    label: str = Field(min_length=1)


class CountingController(SwapController):
    kind = "counting"
    Params = CountingParams

    def __init__(self, label, experts):
        self.label = label
        self.experts = experts
        self.log = []
        self.loaded = set()

    @classmethod
    def from_config(cls, params, pool):
        return cls(PREFIX + params.label, [e.name for e in pool.experts])

    async def load(self, expert):
        self.log.append(("load", expert))
        self.loaded.add(expert)

    async def unload(self, expert):
        self.log.append(("unload", expert))
        self.loaded.discard(expert)

    async def resident(self):
        return set(self.loaded)

    def upstream(self, expert):
        return "http://127.0.0.1:9"
"""


def write_config(tmp_path: Path, controller: str, params: dict[str, object]) -> Path:
    plugins = tmp_path / "controllers"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "counting.py").write_text(PLUGIN)
    (plugins / "_shared.py").write_text("PREFIX = 'shared-'\n")
    data = {
        "experts": [
            {"name": n, "model": n, "endpoints": ["http://127.0.0.1:8200"], "pool": "dev"}
            for n in ("x", "y")
        ],
        "default_expert": "x",
        "pools": {
            "dev": {
                "service": "http://127.0.0.1:8200",
                "controller": controller,
                "capacity": 1,
                "params": params,
            }
        },
        "controllers_dirs": ["controllers"],  # relative to the file
    }
    path = tmp_path / "experts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_builtin_kinds_load_through_the_entry_point_group() -> None:
    registry = ControllerRegistry.load()
    assert registry.names() == ["lora", "process", "sleep", "static"]
    assert registry.get("lora").__module__ == "coe.pool.controllers.lora"


async def test_a_controller_loaded_by_path_runs_a_pool(tmp_path: Path) -> None:
    path = write_config(tmp_path, "counting", {"label": "L"})
    cfg = load_config(path)
    async with httpx.AsyncClient() as http:
        pools = build_pools(cfg, http, base_dir=path.parent)
        pool = pools.pool_of("x")
        assert pool is not None
        ctl = pool.controller
        assert type(ctl).kind == "counting"
        assert (ctl.label, ctl.experts) == ("shared-L", ["x", "y"])  # type: ignore[attr-defined]
        await pools.start()
        try:
            async with pools.admit("x"):
                pass
            async with pools.admit("y"):
                pass
        finally:
            await pools.close()
    assert ctl.log == [("load", "x"), ("unload", "x"), ("load", "y")]  # type: ignore[attr-defined]


def test_a_path_plugin_is_known_and_its_params_checked(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "counting", {"label": ""}))
    with pytest.raises(
        ConfigError, match=r"pools\.dev\.params \(counting\): label: String should have at least"
    ):
        build_pools(cfg, httpx.AsyncClient(), base_dir=tmp_path)
    cfg = load_config(write_config(tmp_path, "teleport", {}))
    with pytest.raises(ConfigError, match=r"\(known: counting, lora, process, sleep, static\)"):
        build_pools(cfg, httpx.AsyncClient(), base_dir=tmp_path)


def test_a_plugin_missing_a_method_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "counting", {"label": "L"})
    plugin = tmp_path / "controllers" / "counting.py"
    plugin.write_text(PLUGIN.split("    def upstream")[0])  # written before upstream() existed
    with pytest.raises(
        ConfigError,
        match=r"pools\.dev\.controller: swap controller kind 'counting' \(.*CountingController\) "
        r"does not implement upstream",
    ):
        build_pools(load_config(path), httpx.AsyncClient(), base_dir=tmp_path)


def test_bad_plugin_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="swap controllers directory does not exist"):
        ControllerRegistry.load(["missing"], tmp_path)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match=r"broken\.py: failed to import swap controller module"):
        ControllerRegistry.load([str(tmp_path)])
    (tmp_path / "broken.py").write_text(
        PLUGIN.replace("from ._shared import PREFIX", "PREFIX = ''").replace(
            '"counting"', '"static"'
        )
    )
    with pytest.raises(ConfigError, match="swap controller kind 'static' is defined twice"):
        ControllerRegistry.load([str(tmp_path)])


def test_a_third_party_package_registers_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed distribution (a dist-info on sys.path) naming its class in the group."""
    (tmp_path / "coe_teleport.py").write_text(
        PLUGIN.replace("from ._shared import PREFIX", "PREFIX = 'ep-'").replace(
            '"counting"', '"teleport"'
        )
    )
    info = tmp_path / "coe_teleport-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: coe-teleport\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[coe.swap_controllers]\nteleport = coe_teleport:CountingController\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "coe_teleport", raising=False)
    cfg = load_config(write_config(tmp_path / "cfg", "teleport", {"label": "L"}))
    pools = build_pools(cfg, httpx.AsyncClient(), base_dir=tmp_path / "cfg")
    pool = pools.pool_of("y")
    assert pool is not None and pool.controller.label == "ep-L"  # type: ignore[attr-defined]
