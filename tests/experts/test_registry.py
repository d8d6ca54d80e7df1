"""The stored registry: seeded from the file, versioned, tolerant of what older versions wrote."""

from __future__ import annotations

import json

from coe.experts.registry import ExpertRegistry
from coe.experts.schema import parse_config
from coe.store import keys
from coe.store.embedded import EmbeddedStore


async def test_seed_then_read_back_and_drop_stale_per_expert_categories() -> None:
    cfg = parse_config(
        {
            "experts": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:9"]}],
            "default_expert": "a",
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(cfg)
    assert list(registry.snapshot()) == ["a"] and registry.version == 1
    # A registry written before the `categories:` table was the only map.
    old = {**json.loads(cfg.experts[0].model_dump_json()), "categories": ["math"]}
    await store.hset(keys.EXPERTS, {"a": json.dumps(old)})
    await store.incr(keys.EXPERTS_VERSION)
    assert await registry.refresh()
    assert registry.get("a").model == "m"
