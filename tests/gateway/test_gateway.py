"""The gateway over real HTTP: OpenAI shapes, errors, metadata, fallback and broken streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.testing import FakeUpstream, Fault
from coe.testing.server import ServedApp

REPO = Path(__file__).resolve().parents[2]
MSG = [{"role": "user", "content": "route me"}]


@pytest.fixture(scope="module")
def ups() -> Iterator[list[FakeUpstream]]:
    servers = [FakeUpstream(f"u{i}").start() for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(autouse=True)
def reset(ups: list[FakeUpstream]) -> None:
    for s in ups:
        s.fault = Fault()


@pytest.fixture(scope="module")
def gateway(ups: list[FakeUpstream]) -> Iterator[str]:
    config = CoeConfig.model_validate(
        {
            "experts": [
                {
                    "name": "alpha",
                    "model": "alpha-m",
                    "endpoints": [ups[0].base_url],
                    "limits": {"timeout_s": 2},
                },
                {
                    "name": "beta",
                    "model": "beta-m",
                    "endpoints": [ups[1].base_url],
                    "limits": {"timeout_s": 2},
                },
            ],
            "default_expert": "alpha",
            "routers": {"first": {"type": "default"}},
            "pipelines": {"auto": {"routers": ["first"]}, "plain": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )
    settings = Settings(max_body_bytes=64 * 1024, max_messages=8, dev_mode=True)
    server = ServedApp(create_app(settings, config)).start()
    yield server.base_url
    server.stop()


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as c:
        yield c


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)


def test_models_lists_experts_and_pipelines(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["coe/auto", "coe/plain", "alpha", "beta"]


def test_auto_routes_and_says_who_answered(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "coe/auto", "messages": MSG})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "[u0] route me"
    assert r.headers["x-coe-expert"] == "alpha" and r.headers["x-coe-router"] == "first"
    assert body["coe"]["expert"] == "alpha" and body["model"] == "alpha"
    assert body["coe"]["upstream_model"] == "alpha-m"
    assert r.headers["x-request-id"] == body["coe"]["request_id"]


def test_expert_by_name_goes_straight_to_it(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="beta", messages=MSG)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "[u1] route me"
    assert out.model_extra is not None and out.model_extra["coe"]["router"] == "direct"


def test_fallback_to_next_ranked_expert(http: httpx.Client, ups: list[FakeUpstream]) -> None:
    ups[0].fault = Fault(mode="status", status=500)
    r = http.post("/v1/chat/completions", json={"model": "coe/auto", "messages": MSG})
    assert r.status_code == 200
    assert r.headers["x-coe-expert"] == "beta"
    failures = r.json()["coe"]["failures"]
    assert failures[0]["expert"] == "alpha" and failures[0]["status"] == 502


def test_all_experts_failing_is_a_502_in_openai_shape(
    http: httpx.Client, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="status", status=500)
    ups[1].fault = Fault(mode="hang")
    r = http.post("/v1/chat/completions", json={"model": "coe/auto", "messages": MSG})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "upstream_error"
    assert "alpha" in err["message"] and "timed out" in err["message"]


def test_unknown_fields_pass_through(http: httpx.Client, ups: list[FakeUpstream]) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={"model": "alpha", "messages": MSG, "top_k": 5, "repetition_penalty": 1.1},
    )
    assert r.status_code == 200
    sent = ups[0].state.bodies[-1]
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
def test_bad_requests_get_specific_openai_errors(
    http: httpx.Client, payload: bytes, status: int, needle: str
) -> None:
    r = http.post(
        "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_unknown_path_and_method_are_openai_shaped(http: httpx.Client) -> None:
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_raises_on_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=MSG)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found"


def test_stream_through_openai_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="coe/auto",
        messages=MSG,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "[u0] route me"
    assert chunks[0].model_extra is not None and chunks[0].model_extra["coe"]["expert"] == "alpha"
    assert all(c.usage is None for c in chunks)  # not asked for


def test_stream_usage_when_asked(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="beta",
        messages=MSG,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_stream_falls_back_before_first_token(http: httpx.Client, ups: list[FakeUpstream]) -> None:
    ups[0].fault = Fault(mode="cut", cut_after=0)
    with http.stream(
        "POST", "/v1/chat/completions", json={"model": "coe/auto", "messages": MSG, "stream": True}
    ) as r:
        assert r.headers["x-coe-expert"] == "beta"
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["coe"]["failures"][0]["expert"] == "alpha"


def test_broken_stream_ends_with_error_event(
    http: httpx.Client, client: openai.OpenAI, ups: list[FakeUpstream]
) -> None:
    ups[0].fault = Fault(mode="cut", cut_after=2)
    with http.stream(
        "POST", "/v1/chat/completions", json={"model": "alpha", "messages": MSG, "stream": True}
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1][6:])
    assert last["error"]["code"] == "stream_interrupted"
    with pytest.raises(openai.APIError, match="stream broke"):
        list(
            client.chat.completions.create(
                model="alpha",
                messages=MSG,
                stream=True,  # type: ignore[arg-type]
            )
        )


def test_route_endpoint_explains_without_generating(
    http: httpx.Client, ups: list[FakeUpstream]
) -> None:
    before = ups[0].state.requests + ups[1].state.requests
    r = http.post("/v1/route", json={"query": "anything"})
    assert r.status_code == 200
    d = r.json()
    assert d["chosen"] == ["alpha"] and d["router"] == "first"
    assert [c["expert"] for c in d["candidates"]] == ["alpha", "beta"]
    assert ups[0].state.requests + ups[1].state.requests == before
    assert http.post("/v1/route", json={}).status_code == 400
    assert http.post("/v1/route", json={"query": "x", "model": "coe/none"}).status_code == 404
