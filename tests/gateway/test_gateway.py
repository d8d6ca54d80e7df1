"""The gateway's OpenAI shapes, errors, metadata, fallback and streams.

Most tests run in process (no socket); timeouts and broken streams, which ASGITransport
cannot show, run over real HTTP against real fake-upstream servers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.gateway.answer_meta import decision_headers
from coe.routing import Candidate, RouteDecision
from coe.testing import FakeUpstream, Fault
from tests.support.asgi import GATEWAY_URL, InProcessUpstream, gateway_client, route_to
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]
MSG = [{"role": "user", "content": "route me"}]


def gateway_config(urls: list[str], timeout_s: float) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {
                    "name": name,
                    "model": f"{name}-m",
                    "endpoints": [url],
                    "limits": {"timeout_s": timeout_s},
                }
                for name, url in zip(("alpha", "beta"), urls, strict=True)
            ],
            "default_expert": "alpha",
            "routers": {"first": {"type": "default"}},
            "pipelines": {"auto": {"routers": ["first"]}, "plain": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )


def gateway_settings() -> Settings:
    return Settings(max_body_bytes=64 * 1024, max_messages=8, dev_mode=True)


# -- in process ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fakes() -> list[InProcessUpstream]:
    return [InProcessUpstream(f"u{i}") for i in range(2)]


@pytest.fixture(autouse=True)
def reset(fakes: list[InProcessUpstream]) -> None:
    for f in fakes:
        f.fault = Fault()


@pytest.fixture(scope="module")
async def http(fakes: list[InProcessUpstream]) -> AsyncIterator[httpx.AsyncClient]:
    config = gateway_config([f.base_url for f in fakes], timeout_s=2)
    async with gateway_client(gateway_settings(), config, route_to(*fakes)) as client:
        yield client


@pytest.fixture(scope="module")
def client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{GATEWAY_URL}/v1", api_key="unused", max_retries=0, http_client=http
    )


async def test_models_lists_experts_and_pipelines(client: openai.AsyncOpenAI) -> None:
    ids = [m.id for m in (await client.models.list()).data]
    assert ids == ["coe/auto", "coe/plain", "alpha", "beta"]


async def test_auto_routes_and_says_who_answered(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "coe/auto", "messages": MSG})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "[u0] route me"
    assert r.headers["x-coe-expert"] == "alpha" and r.headers["x-coe-router"] == "first"
    assert r.headers["x-coe-confidence"] == "1"  # the default router's top score
    assert "x-coe-category" not in r.headers  # it names no category
    assert body["coe"]["expert"] == "alpha" and body["model"] == "alpha"
    assert body["coe"]["upstream_model"] == "alpha-m"
    assert r.headers["x-request-id"] == body["coe"]["request_id"]


async def test_expert_by_name_goes_straight_to_it(client: openai.AsyncOpenAI) -> None:
    out = await client.chat.completions.create(model="beta", messages=MSG)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "[u1] route me"
    assert out.model_extra is not None and out.model_extra["coe"]["router"] == "direct"


async def test_fallback_to_next_ranked_expert(
    http: httpx.AsyncClient, fakes: list[InProcessUpstream]
) -> None:
    fakes[0].fault = Fault(mode="status", status=500)
    r = await http.post("/v1/chat/completions", json={"model": "coe/auto", "messages": MSG})
    assert r.status_code == 200
    assert r.headers["x-coe-expert"] == "beta"
    failures = r.json()["coe"]["failures"]
    assert failures[0]["expert"] == "alpha" and failures[0]["status"] == 502


async def test_unknown_fields_pass_through(
    http: httpx.AsyncClient, fakes: list[InProcessUpstream]
) -> None:
    r = await http.post(
        "/v1/chat/completions",
        json={"model": "alpha", "messages": MSG, "top_k": 5, "repetition_penalty": 1.1},
    )
    assert r.status_code == 200
    sent = fakes[0].state.bodies[-1]
    assert sent["top_k"] == 5 and sent["repetition_penalty"] == 1.1


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b"", 400, "empty"),
        (json.dumps({"model": "coe/auto", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "coe/auto"}).encode(), 400, "messages: Field required"),
        (
            json.dumps(
                {"model": "coe/auto", "messages": [{"role": "wizard", "content": "x"}]}
            ).encode(),
            400,
            "messages.0.role",
        ),
        (
            json.dumps({"model": "coe/auto", "messages": MSG, "temperature": 9}).encode(),
            400,
            "temperature",
        ),
        (
            json.dumps(
                {"model": "coe/auto", "messages": [{"role": "system", "content": "x"}]}
            ).encode(),
            400,
            "at least one user message",
        ),
        (json.dumps({"model": "coe/auto", "messages": MSG * 9}).encode(), 400, "limit is 8"),
        (json.dumps({"model": "gpt-nope", "messages": MSG}).encode(), 404, "does not exist"),
        (
            json.dumps(
                {"model": "x", "messages": [{"role": "user", "content": "a" * 70000}]}
            ).encode(),
            413,
            "exceeds",
        ),
    ],
)
async def test_bad_requests_get_specific_openai_errors(
    http: httpx.AsyncClient, payload: bytes, status: int, needle: str
) -> None:
    r = await http.post(
        "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


async def test_unknown_path_and_method_are_openai_shaped(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = await http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


async def test_openai_client_raises_on_errors(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="gpt-nope", messages=MSG)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found"


async def test_stream_through_openai_client(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="coe/auto",
        messages=MSG,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "[u0] route me"
    assert chunks[0].model_extra is not None and chunks[0].model_extra["coe"]["expert"] == "alpha"
    assert all(c.usage is None for c in chunks)  # not asked for


async def test_stream_usage_when_asked(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="beta",
        messages=MSG,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_route_endpoint_explains_without_generating(
    http: httpx.AsyncClient, fakes: list[InProcessUpstream]
) -> None:
    before = fakes[0].state.requests + fakes[1].state.requests
    r = await http.post("/v1/route", json={"query": "anything"})
    assert r.status_code == 200
    d = r.json()
    assert d["chosen"] == ["alpha"] and d["router"] == "first"
    assert [c["expert"] for c in d["candidates"]] == ["alpha", "beta"]
    assert fakes[0].state.requests + fakes[1].state.requests == before
    assert (await http.post("/v1/route", json={})).status_code == 400
    r = await http.post("/v1/route", json={"query": "x", "model": "coe/none"})
    assert r.status_code == 404


# -- over real HTTP: timeouts and broken streams ---------------------------------------------
@pytest.fixture(scope="module")
def servers() -> Iterator[list[FakeUpstream]]:
    started = [FakeUpstream(f"u{i}").start() for i in range(2)]
    yield started
    for s in started:
        s.stop()


@pytest.fixture
def ups(servers: list[FakeUpstream]) -> list[FakeUpstream]:
    for s in servers:
        s.fault = Fault()
    return servers


@pytest.fixture(scope="module")
def gateway(servers: list[FakeUpstream]) -> Iterator[str]:
    config = gateway_config([s.base_url for s in servers], timeout_s=1)
    server = ServedApp(create_app(gateway_settings(), config)).start()
    yield server.base_url
    server.stop()


@pytest.fixture
def real_http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as c:
        yield c


def test_all_experts_failing_is_a_502_in_openai_shape(
    real_http: httpx.Client, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="status", status=500)
    ups[1].fault = Fault(mode="hang")
    r = real_http.post("/v1/chat/completions", json={"model": "coe/auto", "messages": MSG})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "upstream_error"
    assert "alpha" in err["message"] and "timed out" in err["message"]


def test_stream_falls_back_before_first_token(
    real_http: httpx.Client, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="cut", cut_after=0)
    with real_http.stream(
        "POST", "/v1/chat/completions", json={"model": "coe/auto", "messages": MSG, "stream": True}
    ) as r:
        assert r.headers["x-coe-expert"] == "beta"
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["coe"]["failures"][0]["expert"] == "alpha"


def test_broken_stream_ends_with_error_event(
    real_http: httpx.Client, gateway: str, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="cut", cut_after=2)
    with real_http.stream(
        "POST", "/v1/chat/completions", json={"model": "alpha", "messages": MSG, "stream": True}
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1][6:])
    assert last["error"]["code"] == "stream_interrupted"
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError, match="stream broke"):
        list(
            client.chat.completions.create(
                model="alpha",
                messages=MSG,
                stream=True,  # type: ignore[arg-type]
            )
        )


def test_decision_headers_carry_confidence_and_a_header_safe_category() -> None:
    decision = RouteDecision(
        candidates=(Candidate("alpha", 0.8734567), Candidate("beta", 0.1)),
        router="topic",
        reason="nearest examples",
        category="mathématiques\r\nx-evil: 1",
    )
    headers = decision_headers(decision)
    assert headers["x-coe-router"] == "topic"
    assert headers["x-coe-confidence"] == "0.8735"
    assert headers["x-coe-category"] == "math%C3%A9matiques%0D%0Ax-evil: 1"
    headers["x-coe-category"].encode("ascii")  # always a valid header value
