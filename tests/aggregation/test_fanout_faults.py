"""Fan-out and aggregation with fault-injecting experts whose answers we set.

A fake upstream answers "[<name>] <question>", so each test sets the names to control what
every expert says; the aggregator and judge are fake upstreams too, so their calls are
counted. Most tests run in process; hanging experts (the deadline), keep-alive timing and
broken streams need real servers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.testing import FakeUpstream, Fault
from tests.aggregation.conftest import ROUTERS_DIRS, fixed
from tests.support.asgi import InProcessUpstream, gateway_client, route_to

QUESTION = "Pick one."
SCORES = {"e0": 0.9, "e1": 0.5, "e2": 0.2}
NAMES = ("e0", "e1", "e2", "agg")
Upstreams = dict[str, FakeUpstream] | dict[str, InProcessUpstream]


def fanout_config(ups: Upstreams) -> dict[str, Any]:
    def agg(strategy: str, **more: Any) -> dict[str, Any]:
        spec = {"strategy": strategy, "aggregator": "agg", "deadline_s": 1.5, "keepalive_s": 0.25}
        return {**spec, **more}

    return {
        "experts": [
            {
                "name": name,
                "model": f"{name}-model",
                "endpoints": [server.base_url],
                "limits": {"timeout_s": 10},
            }
            for name, server in ups.items()
        ],
        "default_expert": "e0",
        "routers": {
            "r3": fixed(SCORES, k=3),
            "tie": fixed({"e0": 0.2, "e1": 0.7}, k=2),
            "picked": fixed(SCORES, k=2, aggregator="e2"),
        },
        "pipelines": {
            "vote": {"routers": ["r3"], "aggregation": agg("vote")},
            "tie": {"routers": ["tie"], "aggregation": agg("vote")},
            "first": {"routers": ["r3"], "aggregation": agg("first")},
            "synth": {"routers": ["r3"], "aggregation": agg("synthesize")},
            "best": {"routers": ["r3"], "aggregation": agg("best")},
            "picked": {"routers": ["picked"], "aggregation": agg("synthesize")},
            "fixedk": {"routers": ["r3"], "k": 2, "aggregation": agg("synthesize")},
            "dyn": {
                "routers": ["r3"],
                "dynamic_k": {"tau": 0.9, "max_k": 3},
                "aggregation": agg("synthesize"),
            },
            "single": {"routers": ["r3"], "k": 1},
            "auto": {"routers": ["default"]},
        },
    }


def reset_all(ups: Upstreams) -> None:
    for name, server in ups.items():
        server.fault = Fault()
        server.state.name = name
        server.state.requests = 0


async def ask(http: httpx.AsyncClient, pipeline: str, **more: Any) -> httpx.Response:
    body = {"model": f"coe/{pipeline}", "messages": [{"role": "user", "content": QUESTION}]}
    return await http.post("/v1/chat/completions", json={**body, **more})


def say(ups: Upstreams, **names: str) -> None:
    """Make expert `e0` answer "[<names['e0']>] Pick one.", and so on."""
    for expert, name in names.items():
        ups[expert].state.name = name


def content(r: httpx.Response) -> str:
    return str(r.json()["choices"][0]["message"]["content"])


def answers(r: httpx.Response) -> dict[str, dict[str, Any]]:
    return {a["expert"]: a for a in r.json()["coe"]["answers"]}


def assert_usage_sums(r: httpx.Response) -> None:
    body = r.json()
    parts = [a["usage"] for a in body["coe"]["answers"] if a["usage"]]
    extra = body["coe"]["aggregation"].get("aggregator_usage")
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        expected = sum(p[key] for p in parts) + (extra[key] if extra else 0)
        assert body["usage"][key] == expected == body["coe"]["usage"][key]


async def sse(
    http: httpx.AsyncClient, pipeline: str, **more: Any
) -> tuple[httpx.Response, list[str]]:
    body = {
        "model": f"coe/{pipeline}",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        **more,
    }
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [line async for line in r.aiter_lines() if line]
    return r, lines


def events(lines: list[str]) -> list[Any]:
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in lines
        if line.startswith("data: ")
    ]


# -- in process ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fakes() -> dict[str, InProcessUpstream]:
    return {name: InProcessUpstream(name) for name in NAMES}


@pytest.fixture
def ups(fakes: dict[str, InProcessUpstream]) -> dict[str, InProcessUpstream]:
    reset_all(fakes)
    return fakes


@pytest.fixture(scope="module")
async def http(fakes: dict[str, InProcessUpstream]) -> AsyncIterator[httpx.AsyncClient]:
    config = CoeConfig.model_validate({**fanout_config(fakes), "routers_dirs": ROUTERS_DIRS})
    transport = route_to(*fakes.values())
    async with gateway_client(Settings(dev_mode=True), config, transport, timeout=20) as client:
        yield client


async def test_vote_takes_the_majority_answer(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="The answer is 7", e2="9")
    r = await ask(http, "vote")
    assert r.status_code == 200, r.text
    assert content(r) == "[7] Pick one."  # e0: best-scored expert of the winning group
    coe = r.json()["coe"]
    assert coe["aggregation"]["vote"]["counts"] == {"7": 2, "9": 1}
    assert coe["aggregation"]["strategy"] == "vote" and coe["aggregation"]["aggregator"] is None
    assert r.headers["x-coe-expert"] == "e0,e1,e2" and "x-coe-aggregator" not in r.headers
    assert {a["expert"]: a["score"] for a in coe["answers"]} == SCORES
    assert all(a["status"] == "ok" and a["latency_ms"] > 0 for a in coe["answers"])
    assert ups["agg"].state.requests == 0
    assert_usage_sums(r)


async def test_vote_tie_goes_to_the_higher_router_score(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="9")
    r = await ask(http, "tie")
    vote = r.json()["coe"]["aggregation"]["vote"]
    assert vote["winner"] == "e1" and vote["tie_broken_by_score"] is True
    assert content(r) == "[9] Pick one."


async def test_first_success_wins_and_the_rest_are_cancelled(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    ups["e0"].fault = Fault(delay_s=1.0)
    ups["e1"].fault = Fault(mode="status", status=500)
    ups["e2"].fault = Fault(delay_s=0.2)  # e1's quick failure lands first, e2 then wins
    started = time.monotonic()
    r = await ask(http, "first")
    assert time.monotonic() - started < 0.9
    assert content(r) == "[e2] Pick one."
    status = {e: a["status"] for e, a in answers(r).items()}
    assert status == {"e0": "cancelled", "e1": "failed", "e2": "ok"}
    assert [f["expert"] for f in r.json()["coe"]["failures"]] == ["e1"]


async def test_aggregator_is_skipped_when_all_experts_agree(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="B", e1="The answer is B", e2="B)")
    r = await ask(http, "synth")
    agg = r.json()["coe"]["aggregation"]
    assert agg["skipped"] == "all experts agree" and agg["aggregator"] is None
    assert ups["agg"].state.requests == 0
    assert content(r) == "[B] Pick one." and r.headers["x-coe-expert"] == "e0,e1,e2"


async def test_synthesize_shows_the_aggregator_every_answer(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="8", e2="9")
    r = await ask(http, "synth", max_tokens=20, temperature=0)
    assert r.status_code == 200, r.text
    assert content(r).startswith("[agg] ")
    assert r.headers["x-coe-aggregator"] == "agg" and r.headers["x-coe-expert"] == "e0,e1,e2"
    assert r.json()["model"] == "agg" and r.json()["coe"]["aggregation"]["skipped"] is None
    sent = ups["agg"].state.bodies[-1]
    prompt = sent["messages"][-1]["content"]
    assert "may be wrong" in prompt and QUESTION in prompt
    for i, name in enumerate(("7", "8", "9"), start=1):  # best router score first
        assert f"Candidate {i}:\n[{name}] {QUESTION}" in prompt
    assert sent["max_tokens"] == 20 and sent["temperature"] == 0 and sent["model"] == "agg-model"
    assert_usage_sums(r)


async def test_router_chosen_aggregator_beats_the_fixed_one(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="8")
    r = await ask(http, "picked")
    assert r.headers["x-coe-aggregator"] == "e2" and content(r).startswith("[e2] ")
    assert set(answers(r)) == {"e0", "e1"} and ups["agg"].state.requests == 0


async def test_pipeline_k_and_dynamic_k_fan_out(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    assert set(answers(await ask(http, "fixedk"))) == {"e0", "e1"}
    assert set(answers(await ask(http, "dyn"))) == {"e0", "e1", "e2"}


async def test_best_returns_the_judges_pick(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="8", e2="9", agg="The best answer is 2")
    r = await ask(http, "best")
    assert content(r) == "[8] Pick one."  # candidate 2 in score order is e1
    agg = r.json()["coe"]["aggregation"]
    assert agg["verdict"]["choice"] == 2 and agg["aggregator"] == "agg" and agg["note"] is None
    assert r.headers["x-coe-aggregator"] == "agg"
    assert_usage_sums(r)


async def test_best_with_an_unparseable_verdict_says_so(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="8", e2="9", agg="no idea")
    r = await ask(http, "best")
    agg = r.json()["coe"]["aggregation"]
    assert agg["verdict"]["choice"] is None and "unparseable" in agg["note"]
    assert content(r) == "[7] Pick one."


async def test_a_failing_expert_is_left_out_and_reported(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e2="9")
    ups["e1"].fault = Fault(mode="status", status=500)
    r = await ask(http, "synth")
    assert r.status_code == 200, r.text
    assert r.headers["x-coe-expert"] == "e0,e2"
    e1 = answers(r)["e1"]
    assert e1["status"] == "failed" and "500" in e1["error"] and e1["answer"] is None
    (failure,) = r.json()["coe"]["failures"]
    assert failure["expert"] == "e1" and failure["status"] == 502
    prompt = ups["agg"].state.bodies[-1]["messages"][-1]["content"]
    assert "Candidate 3" not in prompt


async def test_a_failing_aggregator_falls_back_and_says_so(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="8", e2="9")
    ups["agg"].fault = Fault(mode="status", status=503)
    r = await ask(http, "synth")
    assert r.status_code == 200
    assert content(r).startswith("[7] ")  # e0, the top-scored expert, synthesised
    coe = r.json()["coe"]
    assert coe["aggregation"]["aggregator"] == "e0" and "agg failed" in coe["aggregation"]["note"]
    assert [f["expert"] for f in coe["failures"]] == ["agg"]


async def test_k1_is_unchanged(http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]) -> None:
    ups["e0"].fault = Fault(mode="status", status=500)
    r = await ask(http, "single")
    assert r.status_code == 200 and content(r) == "[e1] Pick one."  # fell back down the list
    coe = r.json()["coe"]
    assert r.headers["x-coe-expert"] == "e1" and "answers" not in coe
    assert coe["failures"][0]["expert"] == "e0" and ups["e2"].state.requests == 0


async def test_a_quick_fan_out_streams_with_headers_and_no_keep_alive(
    http: httpx.AsyncClient, ups: dict[str, InProcessUpstream]
) -> None:
    say(ups, e0="7", e1="7", e2="9")
    r, lines = await sse(http, "vote")
    assert ": keep-alive" not in lines and r.headers["x-coe-expert"] == "e0,e1,e2"
    out = events(lines)
    assert out[0]["choices"][0]["delta"]["content"] == "[7] Pick one."
    assert out[-1] == "[DONE]" and all("usage" not in c for c in out[:-1])


# -- over real HTTP: hanging experts, keep-alive timing, broken streams ----------------------
@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeUpstream]]:
    started = {name: FakeUpstream(name).start() for name in NAMES}
    yield started
    with ThreadPoolExecutor() as pool:  # each waits out its hung requests: wait once
        list(pool.map(FakeUpstream.stop, started.values()))


@pytest.fixture
def real(servers: dict[str, FakeUpstream]) -> dict[str, FakeUpstream]:
    reset_all(servers)
    return servers


@pytest.fixture(scope="module")
def gateway(serve: Any, servers: dict[str, FakeUpstream]) -> str:
    url: str = serve(fanout_config(servers))
    return url


@pytest.fixture
async def real_http(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=20) as client:
        yield client


async def test_deadline_cuts_a_hanging_expert(
    real_http: httpx.AsyncClient, real: dict[str, FakeUpstream]
) -> None:
    say(real, e0="7", e1="8")
    real["e2"].fault = Fault(mode="hang")
    started = time.monotonic()
    r = await ask(real_http, "synth")
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert 1.4 < elapsed < 1.5 + 1.0  # the deadline, plus the aggregator call and a margin
    e2 = answers(r)["e2"]
    assert e2["status"] == "timed_out" and "deadline" in e2["error"]
    assert 1400 < e2["latency_ms"] < 2500
    assert r.json()["coe"]["failures"][0]["status"] == 504
    assert r.headers["x-coe-expert"] == "e0,e1"


async def test_no_answer_at_all_is_one_error_listing_every_failure(
    real_http: httpx.AsyncClient, real: dict[str, FakeUpstream]
) -> None:
    real["e0"].fault = Fault(mode="status", status=500)
    real["e1"].fault = Fault(mode="garbage")
    real["e2"].fault = Fault(mode="hang")
    r = await ask(real_http, "synth")
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and "all 3 chosen experts failed" in err["message"]
    for name in ("e0", "e1", "e2"):
        assert f"expert {name}" in err["message"]
    for server in real.values():
        server.fault = Fault(mode="hang")
    assert (await ask(real_http, "vote")).status_code == 504  # only timeouts: a gateway timeout


async def test_slow_fan_out_streams_keep_alives_then_the_answer(
    real_http: httpx.AsyncClient, real: dict[str, FakeUpstream]
) -> None:
    say(real, e0="7", e1="8", e2="9")
    for name in ("e0", "e1", "e2"):
        real[name].fault = Fault(delay_s=1.0)
    r, lines = await sse(real_http, "synth", stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert lines[:first_data].count(": keep-alive") >= 2  # 1 s of fan-out at 0.25 s
    out = events(lines)
    assert out[-1] == "[DONE]"
    coe = out[0]["coe"]
    assert coe["experts"] == ["e0", "e1", "e2"] and coe["aggregation"]["aggregator"] == "agg"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in out[:-1] if c["choices"])
    assert text.startswith("[agg] ")
    usage = out[-2]["usage"]
    experts = sum(a["usage"]["total_tokens"] for a in coe["answers"])
    assert usage["total_tokens"] > experts == coe["usage"]["total_tokens"]


async def test_aggregator_breaking_mid_stream_ends_with_an_error_event(
    real_http: httpx.AsyncClient, real: dict[str, FakeUpstream]
) -> None:
    say(real, e0="7", e1="8", e2="9")
    real["agg"].fault = Fault(mode="cut", cut_after=2)
    r, lines = await sse(real_http, "synth")
    assert r.status_code == 200 and r.headers["x-coe-aggregator"] == "agg"
    out = events(lines)
    assert out[-1]["error"]["code"] == "stream_interrupted" and "[DONE]" not in out


async def test_fan_out_failing_after_keep_alives_is_an_error_event(
    real_http: httpx.AsyncClient, real: dict[str, FakeUpstream]
) -> None:
    for name in ("e0", "e1", "e2"):
        real[name].fault = Fault(mode="status", status=500, delay_s=0.6)
    r, lines = await sse(real_http, "synth")
    assert r.status_code == 200 and lines[0] == ": keep-alive"
    (error,) = events(lines)
    assert error["error"]["type"] == "upstream_error" and "e2" in error["error"]["message"]
    for name in ("e0", "e1", "e2"):
        real[name].fault = Fault(mode="status", status=500)
    r, _ = await sse(real_http, "synth")
    assert r.status_code == 502  # failed before the stream began: a plain HTTP error


def test_openai_client_streams_through_keep_alives(
    gateway: str, real: dict[str, FakeUpstream]
) -> None:
    say(real, e0="7", e1="8", e2="9")
    real["e0"].fault = Fault(delay_s=0.8)
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="coe/synth",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
    )
    chunks = list(stream)
    assert (chunks[0].model_extra or {})["coe"]["aggregation"]["aggregator"] == "agg"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[agg] You are given a question")
