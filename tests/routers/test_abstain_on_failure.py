"""Routers that need the store or an LLM abstain when those fail, and the pipeline moves on:
real Redis behind a proxy that is cut, a FakeUpstream LLM answering 500 or hanging, the real
encoder. A store outage on a cache read only skips the cache; programming errors surface."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from coe.dispatch import ExpertClient
from coe.errors import RouterBusy, StoreUnavailable, UpstreamTimeout
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import Engine, Target, build_engine
from coe.routing import RouteContext, RouteDecision, Router, RouterDeps
from coe.routing.base import NoParams
from coe.routing.encoders import EncoderCache
from coe.routing.registry import RouterRegistry
from coe.store.embedded import EmbeddedStore
from coe.store.redis_store import RedisStore
from coe.testing import FakeUpstream, Fault
from tests.conftest import REDIS_URL
from tests.support.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[2]
BODY = {"model": "coe/auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
PROFILES = {
    "vocabulary": ["math", "law"],
    "profiles": {"alpha": {"math": 1.0}, "beta": {"law": 1.0}},
}


@dataclass
class World:
    engine: Engine
    llm: FakeUpstream
    answers: FakeUpstream
    proxy: TcpProxy


@pytest.fixture
async def world(encoders: EncoderCache, tmp_path: Path) -> AsyncIterator[World]:
    """An engine with an instruction and a skills pipeline whose LLM is `writer`, on a Redis
    reached through a proxy the test can cut."""
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps(PROFILES))
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = await TcpProxy("127.0.0.1", port).start()
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{proxy.port}/0", prefix=f"coe-test-abstain:{uuid.uuid4().hex[:10]}:"
    )
    llm_params = {"llm_timeout_s": 1.0}
    with FakeUpstream("writer") as llm, FakeUpstream("answers") as answers:
        expert = {"model": "m", "endpoints": [answers.base_url]}
        config = CoeConfig.model_validate(
            {
                "experts": [
                    {"name": "alpha", **expert},
                    {"name": "beta", **expert},
                    {"name": "writer", "model": "m", "endpoints": [llm.base_url]},
                ],
                "default_expert": "alpha",
                "routers": {
                    "instr": {
                        "type": "instruction",
                        "params": {"instruction_expert": "writer", **llm_params},
                    },
                    "skills": {
                        "type": "skills",
                        "params": {
                            "profiles": str(profiles),
                            "keyword_expert": "writer",
                            "samples": 1,
                            **llm_params,
                        },
                    },
                },
                "pipelines": {
                    "auto": {"routers": ["instr", "default"]},
                    "skills": {"routers": ["skills", "default"]},
                },
                "routers_dirs": [str(REPO / "routers")],
            }
        )
        async with httpx.AsyncClient(timeout=30) as http:
            registry = ExpertRegistry(store)
            await registry.seed(config)
            engine = await build_engine(
                config, registry, ExpertClient(http), store, tmp_path, encoders=encoders
            )
            try:
                yield World(engine, llm, answers, proxy)
            finally:
                await proxy.restore()
                keys = [k async for k in store.client.scan_iter(match=store.prefix + "*")]
                if keys:
                    await store.client.delete(*keys)
                await store.close()
                await proxy.cut()


@pytest.mark.embed
@pytest.mark.redis
@pytest.mark.parametrize("fault", ["status", "hang"])
@pytest.mark.parametrize(
    ("pipeline", "router", "role"),
    [("auto", "instr", "instruction"), ("skills", "skills", "keyword")],
)
async def test_llm_and_store_down_fall_through_to_the_next_router(
    world: World, fault: str, pipeline: str, router: str, role: str
) -> None:
    await world.proxy.cut()
    world.llm.fault = Fault(mode=fault)  # type: ignore[arg-type]
    body = {**BODY, "model": f"coe/{pipeline}"}
    plan = await world.engine.plan(body)
    decision = plan.decision
    assert decision.router == "default"
    why = "did not answer within 1 s" if fault == "hang" else "failed:"
    assert f"fell back after {router}: {role} LLM 'writer' {why}" in decision.reason
    assert decision.details["abstained"][0].startswith(f"{router}: {role} LLM 'writer'")
    answer = await world.engine.complete(plan, body)
    assert answer.expert == "alpha" and answer.response is not None
    assert world.llm.state.requests >= 1


@pytest.mark.embed
@pytest.mark.redis
@pytest.mark.parametrize(("pipeline", "router"), [("auto", "instr"), ("skills", "skills")])
async def test_store_down_skips_the_cache_and_still_asks_the_llm(
    world: World, pipeline: str, router: str
) -> None:
    await world.proxy.cut()
    decision = await world.engine.decide(Target(pipeline=pipeline), "What is 2 + 2?")
    assert decision.router == router and not decision.abstained
    assert world.llm.state.requests == 1  # the cache read failed; the LLM was asked anyway


class Failing(Router):
    """A third-party router that fails with whatever it was given."""

    type_name = "failing"
    error: BaseException = RuntimeError()

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        raise self.error


async def failing_engine(error: BaseException) -> Engine:
    config = CoeConfig.model_validate(
        {
            "experts": [{"name": "alpha", "model": "m", "endpoints": ["http://127.0.0.1:9"]}],
            "default_expert": "alpha",
            "routers": {"flaky": {"type": "failing"}},
            "pipelines": {"auto": {"routers": ["flaky", "default"]}},
        }
    )
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(config)
    deps = RouterDeps(config=config, store=store, base_dir=REPO)
    flaky = Failing("flaky", Failing.Params(), deps)
    flaky.error = error
    default = router_types().get("default")("default", NoParams(), deps)
    client = ExpertClient(httpx.AsyncClient())
    return Engine(config, registry, client, {"flaky": flaky, "default": default})


def router_types() -> RouterRegistry:
    types = RouterRegistry()
    types.load_dir(REPO / "routers")
    return types


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailable("Redis is unavailable: connection refused"),
        UpstreamTimeout("expert writer timed out", expert="writer"),
        TimeoutError(),
        RouterBusy("the encoder has 512 texts queued"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_pipeline_treats_router_outages_as_abstentions(error: BaseException) -> None:
    engine = await failing_engine(error)
    decision = await engine.decide(Target(pipeline="auto"), "hello")
    assert decision.router == "default"
    assert f"fell back after flaky: failed ({type(error).__name__}" in decision.reason
    many: Sequence[object] = await engine.decide_many(Target(pipeline="auto"), ["a", "b"])
    assert [d.router for d in many] == ["default", "default"]  # type: ignore[attr-defined]


async def test_programming_errors_in_a_router_surface() -> None:
    engine = await failing_engine(KeyError("oops"))
    with pytest.raises(KeyError):
        await engine.decide(Target(pipeline="auto"), "hello")
    with pytest.raises(KeyError):
        await engine.decide_many(Target(pipeline="auto"), ["a"])


@pytest.mark.parametrize("type_name", ["instruction", "skills"])
def test_cache_ttl_is_finite_and_positive(type_name: str) -> None:
    cls = router_types().get(type_name).Params
    base = {"profiles": "p"} if type_name == "skills" else {}
    assert 0 < cls.model_validate(base).cache_ttl_s < float("inf")  # type: ignore[attr-defined]
    for bad in (None, float("inf"), 0, -1):
        with pytest.raises(ValidationError):
            cls.model_validate({**base, "cache_ttl_s": bad})
