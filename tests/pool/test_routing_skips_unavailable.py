"""An expert whose pool cannot load it is skipped by routing, then offered again later."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from coe.dispatch import ExpertClient
from coe.errors import ExpertUnavailable
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import Target, build_engine
from coe.pool.pools import PoolSet
from coe.store.embedded import EmbeddedStore

from .fakes import FakeController, checked_pool

REPO = Path(__file__).resolve().parents[2]


async def test_decide_skips_experts_a_pool_cannot_load(tmp_path: Path) -> None:
    config = CoeConfig.model_validate(
        {
            "experts": [
                {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"]} for n in ("b", "a")
            ],
            "default_expert": "b",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )
    ctl = FakeController(resident=["a"])
    ctl.fail.add("b")
    pool = checked_pool(ctl, ["a", "b"], 1, retry_after_s=0.3)
    pools = PoolSet({"test": pool})
    await pools.start()
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    async with httpx.AsyncClient() as http:
        engine = await build_engine(
            config, registry, ExpertClient(http, admission=pools), store, tmp_path
        )
        try:
            assert (await engine.decide(Target(pipeline="auto"), "q")).ranked == ["b", "a"]
            with pytest.raises(ExpertUnavailable):
                async with pools.admit("b"):
                    pass
            skipped = await engine.decide(Target(pipeline="auto"), "q")
            assert skipped.ranked == ["a"]
            ctl.fail.clear()
            await asyncio.sleep(0.35)
            assert (await engine.decide(Target(pipeline="auto"), "q")).ranked == ["b", "a"]
        finally:
            await pools.close()
