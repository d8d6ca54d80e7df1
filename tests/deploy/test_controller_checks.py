"""Deploy checks ask the controller class which servers it drives: the built-ins declare
today's rules, and a plug-in kind declaring `servers_param` gets the same per-member checks."""

from __future__ import annotations

from typing import Any

from coe.deploy.pools import controller_class, pool_upstreams
from coe.experts.schema import CoeConfig
from coe.pool.controllers.static import StaticController
from coe.pool.registry import ControllerRegistry


class PairController(StaticController):
    kind = "pair"
    servers_param = "replicas"
    needs_sleep_mode = True


def config(controller: str, params: dict[str, Any]) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {"name": "a", "model": "m", "endpoints": ["http://pool:8100"], "pool": "p"},
                {"name": "b", "model": "m", "endpoints": ["http://pool:8100"], "pool": "p"},
            ],
            "default_expert": "a",
            "pools": {"p": {"service": "http://pool:8100", "capacity": 1,
                            "controller": controller, "params": params}},
        }
    )  # fmt: skip


def test_the_built_ins_declare_their_servers() -> None:
    assert controller_class("static").servers_param == "upstreams"
    assert controller_class("sleep").servers_param == "servers"
    assert controller_class("sleep").needs_sleep_mode
    assert not controller_class("static").needs_sleep_mode
    assert controller_class("lora").driven_urls({"base_url": "http://x:1"}) == [
        ("base_url", "http://x:1")
    ]
    assert controller_class("process").driven_urls({"u": "http://x:1"}) == []


def test_a_plug_in_kind_is_checked_by_what_it_declares() -> None:
    registry = ControllerRegistry.load()
    registry.register(PairController)
    ups, missing = pool_upstreams(
        config("pair", {"upstreams": {}, "replicas": {"a": "http://va:8000"}}), "f", registry
    )
    assert [(u.where, u.url, u.sleep_mode) for u in ups] == [
        ("pools.p.params.replicas.a", "http://va:8000", True)
    ]
    assert missing == [
        "f: pools.p.params.replicas: no server for b (the pair controller calls each "
        "member's own vLLM server; its endpoint is the pool service)"
    ]
    unknown, _ = pool_upstreams(config("elsewhere", {"x": {"y": "http://vx:1"}}), "f")
    assert [(u.where, u.url) for u in unknown] == [("pools.p.params.x.y", "http://vx:1")]
