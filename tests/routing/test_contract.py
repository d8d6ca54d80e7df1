"""The routing contract: decisions, the plug-in loader, pipelines with fallback, dynamic k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coe.dispatch import ExpertClient
from coe.errors import ConfigError, ModelNotFound, RoutingError
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import Plan, Target, build_engine
from coe.routing.decision import Candidate, RouteDecision, ranked_from_scores
from coe.routing.dynamic_k import dynamic_k
from coe.routing.registry import RouterRegistry
from coe.store.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[2]

PLUGIN = """
from pydantic import BaseModel, ConfigDict
from coe.routing.base import Router
from coe.routing.decision import RouteDecision, ranked_from_scores

class KeywordParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str
    expert: str

class KeywordRouter(Router):
    type_name = "keyword"
    Params = KeywordParams

    async def route(self, query, ctx):
        if self.params.word not in query:
            return RouteDecision.abstain(self.name, f"no {self.params.word!r} in the query")
        others = {e: 0.1 for e in ctx.experts if e != self.params.expert}
        scores = {self.params.expert: 0.7, **others}
        return RouteDecision(candidates=ranked_from_scores(scores), router=self.name,
                             reason=f"saw {self.params.word!r}")
"""


def test_decision_invariants() -> None:
    with pytest.raises(ValueError):
        RouteDecision(candidates=(), router="r", reason="x")
    with pytest.raises(ValueError):
        RouteDecision(candidates=(Candidate("a", 1),), router="r", reason="x", k=0)
    d = RouteDecision(
        candidates=ranked_from_scores({"a": 0.2, "b": 0.5, "c": 0.3}), router="r", reason="x", k=2
    )
    assert d.ranked == ["b", "c", "a"] and d.chosen == ["b", "c"]
    assert d.to_dict()["chosen"] == ["b", "c"]


@pytest.mark.parametrize(
    ("scores", "tau", "max_k", "k"),
    [
        ({"a": 0.9, "b": 0.05, "c": 0.05}, 0.4, 3, 1),  # confident: one expert
        ({"a": 0.35, "b": 0.33, "c": 0.32}, 0.4, 3, 2),  # flat: more experts
        ({"a": 0.34, "b": 0.33, "c": 0.33}, 0.9, 3, 3),
        ({"a": 0.34, "b": 0.33, "c": 0.33}, 0.9, 2, 2),  # capped
        ({"a": 3.0, "b": 1.0}, 0.7, 3, 1),  # unnormalised scores are normalised
        ({"a": 0.0, "b": 0.0}, 0.4, 3, 1),  # no mass: keep one
    ],
)
def test_dynamic_k(scores: dict[str, float], tau: float, max_k: int, k: int) -> None:
    d = RouteDecision(candidates=ranked_from_scores(scores), router="r", reason="x")
    out = dynamic_k(d, tau, max_k)
    assert out.k == k
    assert out.details["dynamic_k"]["k"] == k


def test_registry_loads_plugins_by_path(tmp_path: Path) -> None:
    (tmp_path / "keyword.py").write_text(PLUGIN)
    (tmp_path / "_private.py").write_text("raise RuntimeError('must not be imported')")
    reg = RouterRegistry()
    reg.load_dir(REPO / "routers")
    reg.load_dir(tmp_path)
    assert {"default", "keyword"} <= set(reg.types())
    with pytest.raises(
        ConfigError, match=r"routers\.kw\.params \(keyword\): expert: Field required"
    ):
        reg.build("kw", "keyword", {"word": "x"}, deps=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key"):
        reg.build("kw", "keyword", {"word": "x", "expert": "a", "extra": 1}, deps=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown router type 'nope'"):
        reg.get("nope")


def test_plugins_share_private_helpers(tmp_path: Path) -> None:
    (tmp_path / "_shared.py").write_text("WORD = 'shared'\n")
    (tmp_path / "uses_helper.py").write_text(
        PLUGIN.replace('"keyword"', '"helped"')
        .replace(
            "from coe.routing.base import Router",
            "from coe.routing.base import Router\nfrom ._shared import WORD",
        )
        .replace('reason=f"saw {self.params.word!r}"', "reason=WORD")
    )
    reg = RouterRegistry()
    reg.load_dir(tmp_path)
    assert reg.types() == ["helped"]
    module = __import__(reg.get("helped").__module__, fromlist=["WORD"])
    assert module.WORD == "shared"


def test_broken_plugin_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match=r"broken\.py: failed to import"):
        RouterRegistry().load_dir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        RouterRegistry().load_dir(tmp_path / "missing")


async def test_pipeline_falls_back_when_a_router_abstains(tmp_path: Path) -> None:
    (tmp_path / "keyword.py").write_text(PLUGIN.replace('"keyword"', '"keyword2"'))
    config = CoeConfig.model_validate(
        {
            "experts": [
                {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"]}
                for n in ("gen", "math", "code")
            ],
            "default_expert": "gen",
            "routers": {
                "mathy": {"type": "keyword2", "params": {"word": "integral", "expert": "math"}},
                "ghost": {"type": "keyword2", "params": {"word": "x", "expert": "gone"}},
            },
            "pipelines": {
                "auto": {"routers": ["mathy", "default"]},
                "wide": {"routers": ["mathy"], "k": 2},
                "dyn": {"routers": ["mathy"], "dynamic_k": {"tau": 0.9, "max_k": 3}},
            },
            "routers_dirs": [str(REPO / "routers"), str(tmp_path)],
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    engine = await build_engine(config, registry, ExpertClient(None), store, tmp_path)  # type: ignore[arg-type]
    hit = await engine.decide(Target(pipeline="auto"), "solve this integral")
    assert hit.chosen == ["math"] and hit.router == "mathy"
    miss = await engine.decide(Target(pipeline="auto"), "hello")
    assert miss.chosen == ["gen"] and "fell back after mathy" in miss.reason
    assert (await engine.decide(Target(pipeline="wide"), "integral")).k == 2
    assert (await engine.decide(Target(pipeline="dyn"), "integral")).k == 3
    with pytest.raises(RoutingError, match="every router abstained"):
        await engine.decide(Target(pipeline="wide"), "hello")


COUNTING = PLUGIN.replace('"keyword"', '"counting"').replace(
    "    async def route(self, query, ctx):",
    """    batches = []

    async def route_batch(self, queries, ctx):
        type(self).batches.append(list(queries))
        return [await self.route(q, ctx) for q in queries]

    async def route(self, query, ctx):""",
)


async def test_plan_many_routes_a_batch_through_each_router_once(tmp_path: Path) -> None:
    """Batch routing: per target, each router sees every query still unrouted in one call;
    a line that cannot be routed gets its own error and the others go on."""
    (tmp_path / "counting.py").write_text(COUNTING)
    config = CoeConfig.model_validate(
        {
            "experts": [
                {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"]}
                for n in ("gen", "math")
            ],
            "default_expert": "gen",
            "routers": {
                "mathy": {"type": "counting", "params": {"word": "integral", "expert": "math"}},
            },
            "pipelines": {
                "auto": {"routers": ["mathy", "default"]},
                "strict": {"routers": ["mathy"]},
            },
            "routers_dirs": [str(REPO / "routers"), str(tmp_path)],
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    engine = await build_engine(config, registry, ExpertClient(None), store, tmp_path)  # type: ignore[arg-type]
    router_cls = type(engine.routers["mathy"])

    def body(model: str, text: str) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": text}]}

    plans = await engine.plan_many(
        [
            body("coe/auto", "an integral"),
            body("coe/auto", "hello"),
            body("no-such-model", "integral"),
            body("coe/strict", "hello"),
            body("coe/auto", "another integral"),
            body("gen", "direct"),
        ]
    )
    assert isinstance(plans[0], Plan) and plans[0].decision.chosen == ["math"]
    assert isinstance(plans[1], Plan) and plans[1].decision.chosen == ["gen"]
    assert isinstance(plans[2], ModelNotFound)
    assert isinstance(plans[3], RoutingError) and "every router abstained" in plans[3].message
    assert isinstance(plans[4], Plan) and plans[4].decision.router == "mathy"
    assert isinstance(plans[5], Plan) and plans[5].decision.router == "direct"
    # one call for coe/auto's three lines, one for coe/strict's line
    assert sorted(router_cls.batches) == [["an integral", "hello", "another integral"], ["hello"]]
    # a stored plan comes back the same, with its pipeline's aggregation settings
    restored = engine.restore(plans[0].to_dict())
    assert restored.decision == plans[0].decision and restored.target == plans[0].target
