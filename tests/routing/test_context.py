"""What a router sees beside the query: the request's needs, its caller (API key id and
conversation) and the pools' published state, in `route` and per query in `route_batch`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from coe.dispatch import ExpertClient
from coe.errors import InvalidRequest
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import Engine, Plan, Target
from coe.routing import (
    Caller,
    PooledExpert,
    PoolView,
    QueryInfo,
    RequestNeeds,
    RouteContext,
    RouteDecision,
    Router,
    RouterDeps,
    ranked_from_scores,
)
from coe.routing.context import PoolViews, pool_view
from coe.store.embedded import EmbeddedStore

CONFIG = CoeConfig.model_validate(
    {
        "experts": [
            {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"]} for n in ("a", "b")
        ],
        "default_expert": "a",
        "routers": {"rec": {"type": "recording"}},
        "pipelines": {"auto": {"routers": ["rec"]}},
    }
)


class Recording(Router):
    """Routes to `a` and keeps every context it was given: per query, as `route` sees it."""

    type_name = "recording"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[RouteContext] = []
        self.batches: list[RouteContext] = []

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        self.seen.append(ctx)
        return RouteDecision(ranked_from_scores({"a": 1.0}), self.name, "recorded")

    async def route_batch(self, queries: Sequence[str], ctx: RouteContext) -> list[RouteDecision]:
        self.batches.append(ctx)
        return await super().route_batch(queries, ctx)


class Published:
    """A pool-state source (as `coe.dispatch.liveness.PoolStates`), changed by the test."""

    def __init__(self) -> None:
        self.pools: dict[str, dict[str, Any]] = {}
        self.reads = 0

    def states(self) -> Mapping[str, dict[str, Any]]:
        self.reads += 1
        return dict(self.pools)

    def unavailable(self) -> set[str]:
        return set()


def state(resident: str, queue: int = 0) -> dict[str, Any]:
    """What a pool service publishes with `resident` loaded and the other expert failed."""
    other = "b" if resident == "a" else "a"
    return {
        "controller": "swap",
        "capacity": 1,
        "occupied": 1,
        "experts": {
            resident: {"model": "m", "state": "resident", "queue": queue, "active": 1},
            other: {
                "model": "m",
                "state": "unavailable",
                "queue": 0,
                "active": 0,
                "retry_in_s": 2.5,
            },
        },
    }


async def engine_with(pools: Published | None = None, as_liveness: bool = False) -> Engine:
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(CONFIG)
    deps = RouterDeps(config=CONFIG, store=store, base_dir=Path.cwd())
    client = ExpertClient(None, liveness=pools if as_liveness else None)  # type: ignore[arg-type]
    routers = {"rec": Recording("rec", Recording.Params(), deps)}
    return Engine(CONFIG, registry, client, routers, pools=None if as_liveness else pools)


def rec(engine: Engine) -> Recording:
    router = engine.routers["rec"]
    assert isinstance(router, Recording)
    return router


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "coe/auto", "messages": [{"role": "user", "content": text}], **extra}


async def test_defaults_keep_every_existing_context_valid() -> None:
    ctx = RouteContext(experts={}, default_expert="a")
    assert ctx.needs == RequestNeeds() and ctx.caller == Caller() and dict(ctx.pools) == {}
    assert ctx.at(3) is ctx  # no per-query part: every query has this context
    engine = await engine_with()
    await engine.decide(Target(pipeline="auto"), "hi")
    [seen] = rec(engine).seen
    assert seen.needs == RequestNeeds() and seen.caller == Caller() and dict(seen.pools) == {}


async def test_plan_gives_the_router_the_needs_the_key_and_the_conversation() -> None:
    engine = await engine_with()
    body = chat("abcdefgh", tools=[{"type": "function"}], coe={"conversation": "conv-1"})
    plan = await engine.plan(body, "req-1", Caller(key_id="key-7"))
    [seen] = rec(engine).seen
    assert seen.needs == RequestNeeds(tools=True, tokens=2)
    assert seen.caller == Caller(key_id="key-7", conversation="conv-1")
    assert seen.request_id == "req-1"
    # the conversation is not a constraint: not echoed as the policy, k untouched
    assert plan.decision.details["policy"] == {"excluded": {}} and plan.decision.k == 1


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "ü", 7, ["a"]])
async def test_a_bad_conversation_is_a_400_naming_it(bad: object) -> None:
    engine = await engine_with()
    with pytest.raises(InvalidRequest) as err:
        await engine.plan(chat(coe={"conversation": bad}))
    assert err.value.param == "coe.conversation" and err.value.status_code == 400
    assert "coe.conversation" in err.value.message
    assert not rec(engine).seen


async def test_plan_many_gives_each_line_its_needs_and_conversation_in_one_batch() -> None:
    engine = await engine_with()
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    bodies = [
        chat("one", coe={"conversation": "c1"}),
        {"model": "coe/auto", "messages": [{"role": "user", "content": image}]},
        chat("three", coe={"conversation": "c3"}, response_format={"type": "json_object"}),
    ]
    plans = await engine.plan_many(bodies, Caller(key_id="owner"))
    assert all(isinstance(p, Plan) for p in plans)
    router = rec(engine)
    assert len(router.batches) == 2  # lines with and without a policy: two groups
    with_policy = next(b for b in router.batches if len(b.each) == 2)
    assert with_policy.caller == Caller() and with_policy.needs == RequestNeeds()
    assert [q.caller for q in with_policy.each] == [
        Caller("owner", "c1"),
        Caller("owner", "c3"),
    ]
    assert with_policy.each[1].needs.json_schema == "json_object"
    by_line = {ctx.caller.conversation: ctx for ctx in router.seen}  # route() via at(i)
    assert by_line["c1"].needs == RequestNeeds(tokens=1) and by_line["c1"].each == ()
    assert by_line[None].needs.image_input and by_line[None].caller == Caller("owner")


async def test_decide_many_takes_each_querys_info_in_order() -> None:
    engine = await engine_with()
    infos = [QueryInfo(RequestNeeds(tokens=i), Caller(conversation=f"c{i}")) for i in range(3)]
    await engine.decide_many(Target(pipeline="auto"), ["x", "y", "z"], each=infos)
    assert [c.needs.tokens for c in rec(engine).seen] == [0, 1, 2]
    with pytest.raises(ValueError, match="3 queries but 1"):
        await engine.decide_many(Target(pipeline="auto"), ["x", "y", "z"], each=infos[:1])


def test_a_published_pool_state_as_a_view() -> None:
    view = pool_view(state("a", queue=3))
    assert view == PoolView(
        controller="swap",
        capacity=1,
        occupied=1,
        experts={
            "a": PooledExpert(model="m", state="resident", queue=3, active=1),
            "b": PooledExpert(model="m", state="unavailable", retry_in_s=2.5),
        },
    )
    assert view.resident() == ["a"]
    with pytest.raises(TypeError):
        view.experts["c"] = PooledExpert()  # type: ignore[index]
    # a malformed publication is read as far as it goes, never raised on
    odd = pool_view({"capacity": "two", "experts": {"a": "resident", "b": {"queue": True}}})
    assert odd.capacity == 0 and dict(odd.experts) == {"b": PooledExpert()}


@pytest.mark.parametrize("as_liveness", [False, True])
async def test_routers_see_the_pools_last_published_state(as_liveness: bool) -> None:
    published = Published()
    engine = await engine_with(published, as_liveness=as_liveness)
    assert dict(engine.context().pools) == {}
    published.pools["gpu0"] = state("a")
    await engine.decide(Target(pipeline="auto"), "hi")
    seen = rec(engine).seen[-1]
    assert list(seen.pools) == ["gpu0"] and seen.pools["gpu0"].resident() == ["a"]
    with pytest.raises(TypeError):
        seen.pools["gpu1"] = PoolView()  # type: ignore[index]
    published.pools["gpu0"] = state("b")  # a new publication is seen at once
    assert engine.context().pools["gpu0"].experts["b"].state == "resident"


def test_pool_views_are_rebuilt_only_when_a_pool_publishes_anew() -> None:
    published = Published()
    views = PoolViews(published)
    published.pools["p"] = state("a")
    first = views.current()
    assert views.current() is first  # the same publication: the same views
    published.pools["p"] = state("a")  # equal, but published again
    assert views.current() is not first and views.current() == first
    del published.pools["p"]
    assert dict(views.current()) == {}
    assert dict(PoolViews(None).current()) == {}
