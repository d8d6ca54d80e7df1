"""A request's routing policy: validation, the experts it leaves, k, and the engine's batch
path (plan_many groups lines by policy; answers never carry the policy to an expert)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coe.dispatch import ExpertClient
from coe.errors import ExpertUnavailable, InvalidRequest, NoExpertWithinPolicy
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.pipeline import Engine, Plan, build_engine
from coe.routing.decision import RouteDecision, ranked_from_scores
from coe.routing.policy import RoutingPolicy, Scope, expert_body, pipeline_named, policy_of
from coe.store.embedded import EmbeddedStore
from tests.support.asgi import InProcessUpstream, route_to

REPO = Path(__file__).resolve().parents[2]
COSTS = {"alpha": 5.0, "beta": 1.0, "gamma": 2.0}
EXPERTS = {
    name: ExpertSpec(name=name, model=f"{name}-m", endpoints=[f"http://{name}.test"], cost=cost)
    for name, cost in COSTS.items()
}


def scope(available: dict[str, ExpertSpec] | None = None, **policy: Any) -> Scope:
    return Scope.of(RoutingPolicy.model_validate(policy), EXPERTS, available or EXPERTS)


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"k": 0}, "coe.k"),
        ({"k": 17}, "coe.k"),
        ({"k": "2"}, "coe.k"),  # strict: no strings for numbers
        ({"k": True}, "coe.k"),  # nor booleans
        ({"max_cost": -1}, "coe.max_cost"),
        ({"allow": []}, "coe.allow"),
        ({"deny": "alpha"}, "coe.deny"),
        ({"deny": ["alpha", 3]}, "coe.deny.1"),
        ({"pipeline": ""}, "coe.pipeline"),
        ({"colour": "red"}, "coe.colour"),
        ("fast", "coe"),
    ],
)
def test_bad_policies_name_the_field(raw: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        policy_of({"coe": raw})
    assert caught.value.param == param and caught.value.status_code == 400
    assert param in caught.value.message


def test_a_body_without_policy_has_none_and_goes_to_experts_unchanged() -> None:
    body = {"model": "coe/auto", "messages": []}
    assert policy_of(body) is None
    assert expert_body(body) is body
    with_policy = {**body, "coe": {"k": 2}}
    assert policy_of(with_policy) == RoutingPolicy(k=2)
    assert expert_body(with_policy) == body and "coe" in with_policy  # the input is kept


# -- the experts a policy leaves -----------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "left", "excluded"),
    [
        ({}, ["alpha", "beta", "gamma"], {}),
        ({"deny": ["alpha"]}, ["beta", "gamma"], {"alpha": "denied"}),
        ({"allow": ["gamma"]}, ["gamma"], {"alpha": "not allowed", "beta": "not allowed"}),
        ({"allow": ["alpha", "gamma"], "deny": ["alpha"]}, ["gamma"], {"alpha": "denied"}),
        ({"max_cost": 2}, ["beta", "gamma"], {"alpha": "cost 5 exceeds max_cost 2"}),
        ({"max_cost": 1.5, "allow": ["beta"]}, ["beta"], {"gamma": "not allowed"}),
    ],
)
def test_scope_keeps_out_what_the_policy_excludes(
    policy: dict[str, Any], left: list[str], excluded: dict[str, str]
) -> None:
    s = scope(**policy)
    assert list(s.experts) == left
    assert {k: v for k, v in s.excluded.items() if k in excluded} == excluded
    assert set(s.excluded) == set(EXPERTS) - set(left)


@pytest.mark.parametrize(
    ("policy", "error", "param", "needle"),
    [
        ({"allow": ["beta", "zeta", "eta"]}, InvalidRequest, "coe.allow", "eta, zeta"),
        ({"deny": ["omega"]}, InvalidRequest, "coe.deny", "omega"),
        ({"max_cost": 0.5}, NoExpertWithinPolicy, "coe.max_cost", "cost 1 exceeds max_cost"),
        ({"deny": list(COSTS)}, NoExpertWithinPolicy, "coe.deny", "gamma: denied"),
        ({"allow": ["alpha"], "max_cost": 1}, NoExpertWithinPolicy, "coe", "alpha: cost 5"),
        ({"k": 3, "deny": ["beta"]}, InvalidRequest, "coe.k", "only 2 expert(s)"),
    ],
)
def test_policies_nobody_meets_are_specific_400s(
    policy: dict[str, Any], error: type[Exception], param: str, needle: str
) -> None:
    with pytest.raises(error) as caught:
        scope(**policy)
    err = caught.value
    assert type(err) is error and isinstance(err, InvalidRequest)
    assert err.param == param and err.status_code == 400 and needle in err.message


def test_experts_within_the_policy_but_unavailable_are_a_503() -> None:
    with pytest.raises(ExpertUnavailable, match="gamma: unavailable") as caught:
        scope({"alpha": EXPERTS["alpha"]}, allow=["gamma"])
    assert caught.value.status_code == 503


def test_k_overrides_and_is_capped_by_the_ranked_candidates() -> None:
    decision = RouteDecision(
        candidates=ranked_from_scores({"beta": 0.6, "gamma": 0.4}), router="r", reason="x", k=1
    )
    assert scope().with_k(decision) is None  # no k in the policy: the pipeline decides
    two = scope(k=2).with_k(decision)
    assert two is not None and two.chosen == ["beta", "gamma"] and "request policy" in two.reason
    capped = scope(k=3).with_k(decision)
    assert capped is not None and capped.k == 2 and "asked 3" in capped.reason
    stamped = scope(k=2, deny=["alpha"]).stamp(decision)
    assert stamped.details["policy"] == {"k": 2, "deny": ["alpha"], "excluded": {"alpha": "denied"}}


def test_pipeline_must_exist_and_cannot_replace_a_named_expert() -> None:
    pipelines = ["auto", "cheap"]
    assert pipeline_named(RoutingPolicy(), pipelines) is None
    assert pipeline_named(RoutingPolicy(pipeline="cheap"), pipelines) == "cheap"
    assert pipeline_named(RoutingPolicy(pipeline="coe/cheap"), pipelines) == "cheap"
    with pytest.raises(InvalidRequest, match="the pipelines are: auto, cheap") as caught:
        pipeline_named(RoutingPolicy(pipeline="dear"), pipelines)
    assert caught.value.param == "coe.pipeline" and caught.value.code == "unknown_pipeline"
    with pytest.raises(InvalidRequest, match="names expert 'beta'"):
        pipeline_named(RoutingPolicy(pipeline="cheap"), pipelines, expert="beta")


# -- the engine: batch routing and answers -------------------------------------------------
@pytest.fixture
def fakes() -> dict[str, InProcessUpstream]:
    return {name: InProcessUpstream(name) for name in COSTS}


@pytest.fixture
async def engine(fakes: dict[str, InProcessUpstream], tmp_path: Path) -> AsyncIterator[Engine]:
    config = CoeConfig.model_validate(
        {
            "experts": [
                {"name": n, "model": f"{n}-m", "endpoints": [fakes[n].base_url], "cost": c}
                for n, c in COSTS.items()
            ],
            "default_expert": "alpha",
            "routers": {
                "ranked": {
                    "type": "test_fixed_scores",
                    "params": {"scores": {"gamma": 0.6, "beta": 0.3, "alpha": 0.1}},
                }
            },
            "pipelines": {"auto": {"routers": ["default"]}, "cheap": {"routers": ["ranked"]}},
            "routers_dirs": [str(REPO / "routers"), str(REPO / "tests/aggregation/plugins")],
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    async with httpx.AsyncClient(transport=route_to(*fakes.values())) as http:
        yield await build_engine(config, registry, ExpertClient(http), store, tmp_path)


def body(model: str, text: str, **policy: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if policy:
        out["coe"] = policy
    return out


async def test_plan_many_routes_each_line_under_its_own_policy(engine: Engine) -> None:
    plans = await engine.plan_many(
        [
            body("coe/auto", "a"),
            body("coe/auto", "b", deny=["alpha"]),
            body("coe/auto", "c", deny=["alpha"]),
            body("coe/auto", "d", pipeline="cheap", max_cost=1.5),
            body("coe/auto", "e", k=2),
            body("coe/auto", "f", allow=["nobody"]),
            body("coe/auto", "g", k="two"),
            body("gamma", "h", deny=["gamma"]),
        ]
    )
    chosen = [p.decision.chosen if isinstance(p, Plan) else type(p).__name__ for p in plans]
    assert chosen == [
        ["alpha"],
        ["beta"],
        ["beta"],
        ["beta"],
        ["alpha", "beta"],
        "InvalidRequest",
        "InvalidRequest",
        "NoExpertWithinPolicy",
    ]
    d = plans[3]
    assert isinstance(d, Plan) and d.target.pipeline == "cheap"
    assert d.decision.details["policy"]["excluded"] == {
        "alpha": "cost 5 exceeds max_cost 1.5",
        "gamma": "cost 2 exceeds max_cost 1.5",
    }
    # a stored plan (batch phases) keeps the policy it was routed under
    assert engine.restore(d.to_dict()).decision.details["policy"]["max_cost"] == 1.5


async def test_batch_answers_never_send_the_policy(
    engine: Engine, fakes: dict[str, InProcessUpstream]
) -> None:
    line = body("coe/auto", "q", deny=["alpha"], k=2)
    [plan] = await engine.plan_many([line])
    assert isinstance(plan, Plan) and plan.decision.chosen == ["beta", "gamma"]
    await engine.answer_on(plan, "beta", line)
    part = await engine.ask("gamma", line)
    await engine.combine(plan, [part], line)
    sent = [b for f in fakes.values() for b in f.state.bodies]
    assert len(sent) >= 2 and all("coe" not in b for b in sent)
    assert not fakes["alpha"].state.bodies
