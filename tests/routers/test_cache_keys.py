"""Each router declares its LLM-cache namespace; the stored keys are those written before
the namespaces moved out of coe/store/keys.py, so existing caches stay valid."""

from __future__ import annotations

from pathlib import Path

from coe.routing.registry import RouterRegistry
from coe.store import keys

REPO = Path(__file__).resolve().parents[2]


def test_router_cache_keys_are_unchanged() -> None:
    routers = RouterRegistry.load(["routers"], REPO)
    assert routers.get("instruction").cache_namespace == "instruction"  # type: ignore[attr-defined]
    assert routers.get("skills").cache_namespace == "keywords"  # type: ignore[attr-defined]
    for type_name, written in (("instruction", "instruction"), ("skills", "keywords")):
        namespace = routers.get(type_name).cache_namespace  # type: ignore[attr-defined]
        assert keys.router_cache(namespace, "0f3a") == f"cache:{written}:0f3a"
