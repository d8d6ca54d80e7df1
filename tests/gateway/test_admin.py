"""Admin API: the token guards every route; experts CRUD; secrets never echoed; API keys.

In process, each test on a fresh gateway but the bad-credential matrix (one shared gateway:
nothing it sends gets through); the health probe, which proves real connections and a real
refused one, over real HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from coe.config import Settings
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.testing import FakeUpstream
from tests.support.asgi import InProcessUpstream, asgi_client, route_to, running_gateway
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-for-tests-0123456789"
MSG = [{"role": "user", "content": "hi"}]


def config_for(url: str) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [{"name": "alpha", "model": "m", "endpoints": [url]}],
            "default_expert": "alpha",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )


def admin_settings() -> Settings:
    return Settings(admin_token=TOKEN, require_api_key=True)  # type: ignore[arg-type]


# -- in process ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream() -> InProcessUpstream:
    return InProcessUpstream("up")


@pytest.fixture
async def app(upstream: InProcessUpstream) -> AsyncIterator[FastAPI]:
    config = config_for(upstream.base_url)
    async with running_gateway(admin_settings(), config, route_to(upstream)) as gateway:
        yield gateway


@pytest.fixture
async def admin(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app, headers={"authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture(scope="module")
async def shared_anon(upstream: InProcessUpstream) -> AsyncIterator[httpx.AsyncClient]:
    """One gateway for the many requests that change nothing."""
    config = config_for(upstream.base_url)
    async with (
        running_gateway(admin_settings(), config, route_to(upstream)) as gateway,
        asgi_client(gateway) as c,
    ):
        yield c


ADMIN_ROUTES = [
    ("GET", "/admin/experts"),
    ("POST", "/admin/experts"),
    ("GET", "/admin/experts/alpha"),
    ("PATCH", "/admin/experts/alpha"),
    ("DELETE", "/admin/experts/alpha"),
    ("GET", "/admin/experts/alpha/health"),
    ("GET", "/admin/pools"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/routers/rebuild"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("DELETE", "/admin/keys/key-1"),
]

# What each route answers the right token: (request body, status, a field of the answer).
GOOD_ANSWERS: dict[tuple[str, str], tuple[dict[str, Any] | None, int, str | None]] = {
    ("GET", "/admin/experts"): (None, 200, "data"),
    ("POST", "/admin/experts"): (
        {"name": "matrix", "model": "m", "endpoints": ["http://127.0.0.1:9"]},
        201,
        "has_api_key",
    ),
    ("GET", "/admin/experts/alpha"): (None, 200, "endpoints"),
    ("PATCH", "/admin/experts/alpha"): ({"description": "patched"}, 200, "description"),
    ("DELETE", "/admin/experts/alpha"): (None, 409, "error"),  # the default expert stays
    ("GET", "/admin/experts/alpha/health"): (None, 200, "endpoints"),
    ("GET", "/admin/pools"): (None, 200, "pools"),
    ("POST", "/admin/reload"): (None, 200, "pipelines"),
    ("POST", "/admin/routers/rebuild"): (None, 200, "rebuilt"),
    ("GET", "/admin/keys"): (None, 200, "data"),
    ("POST", "/admin/keys"): ({"name": "matrix"}, 201, "key"),
    ("DELETE", "/admin/keys/key-1"): (None, 404, "error"),  # no such key
}
SAME_LENGTH_WRONG = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")
BAD_CREDENTIALS = {
    "missing": None,
    "wrong-token": "Bearer wrong-token",
    "same-length-wrong-token": f"Bearer {SAME_LENGTH_WRONG}",
    "right-token-no-scheme": TOKEN,
    "basic-scheme": "Basic abc",
    "empty-bearer": "Bearer ",
}


async def test_every_admin_route_is_listed_here(shared_anon: httpx.AsyncClient) -> None:
    schema = (await shared_anon.get("/openapi.json")).json()
    served = {
        (m.upper(), p.replace("{name}", "alpha").replace("{key_id}", "key-1"))
        for p, ops in schema["paths"].items()
        if p.startswith("/admin")
        for m in ops
    }
    assert served == set(ADMIN_ROUTES) == set(GOOD_ANSWERS)
    assert len(SAME_LENGTH_WRONG) == len(TOKEN) and SAME_LENGTH_WRONG != TOKEN


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("auth", list(BAD_CREDENTIALS.values()), ids=list(BAD_CREDENTIALS))
async def test_admin_routes_refuse_a_bad_credential(
    shared_anon: httpx.AsyncClient, method: str, path: str, auth: str | None
) -> None:
    headers = {"authorization": auth} if auth else {}
    body, _, _ = GOOD_ANSWERS[(method, path)]
    r = await shared_anon.request(method, path, headers=headers, json=body or {})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "authentication_error"
    assert "COE_ADMIN_TOKEN" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.fixture
async def fresh_admin(
    upstream: InProcessUpstream, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway of its own (the right token changes things), reloadable from its file."""
    config = config_for(upstream.base_url)
    experts_file = tmp_path / "experts.yaml"
    experts_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    settings = admin_settings().model_copy(update={"experts_file": experts_file})
    async with (
        running_gateway(settings, config, route_to(upstream)) as gateway,
        asgi_client(gateway, headers={"authorization": f"Bearer {TOKEN}"}) as c,
    ):
        yield c


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_admin_routes_answer_the_right_token(
    fresh_admin: httpx.AsyncClient, method: str, path: str
) -> None:
    body, status, field = GOOD_ANSWERS[(method, path)]
    r = await fresh_admin.request(method, path, json=body)
    assert r.status_code == status, r.text
    if field is not None:
        assert field in r.json(), r.json()


def test_placeholder_admin_token_refused_at_start() -> None:
    for token in (None, "changeme", "short"):
        with pytest.raises(ConfigError, match="COE_ADMIN_TOKEN"):
            create_app(Settings(admin_token=token), config_for("http://127.0.0.1:9"))  # type: ignore[arg-type]
    create_app(Settings(dev_mode=True), config_for("http://127.0.0.1:9"))


async def test_expert_crud_and_secrets(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, upstream: InProcessUpstream
) -> None:
    new = {
        "name": "beta",
        "model": "m",
        "endpoints": [upstream.base_url],
        "api_key": "sk-upstream-secret",
        "description": "second",
    }
    r = await admin.post("/admin/experts", json=new)
    assert r.status_code == 201, r.text
    assert "sk-upstream-secret" not in r.text and r.json()["has_api_key"] is True
    assert (await admin.post("/admin/experts", json=new)).status_code == 409
    listed = await admin.get("/admin/experts")
    assert "sk-upstream-secret" not in listed.text
    assert [e["name"] for e in listed.json()["data"]] == ["alpha", "beta"]
    r = await admin.patch("/admin/experts/beta", json={"description": "changed", "cost": 2.5})
    assert r.json()["description"] == "changed" and r.json()["cost"] == 2.5
    assert r.json()["has_api_key"] is True  # untouched fields stay
    # the new expert serves at once, with its upstream key sent upstream only
    key = (await admin.post("/admin/keys", json={"name": "crud"})).json()["key"]
    chat = await anon.post(
        "/v1/chat/completions",
        json={"model": "beta", "messages": MSG},
        headers={"authorization": f"Bearer {key}"},
    )
    assert chat.status_code == 200 and chat.headers["x-coe-expert"] == "beta"
    assert (await admin.delete("/admin/experts/beta")).status_code == 204
    assert (await admin.get("/admin/experts/beta")).status_code == 404
    assert (await admin.delete("/admin/experts/alpha")).status_code == 409  # the default expert


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "x", "model": "m", "endpoints": ["ftp://host"]}, "endpoints.0"),
        ({"name": "x", "model": "m", "endpoints": []}, "endpoints"),
        ({"name": "bad name", "model": "m", "endpoints": ["http://h"]}, "name"),
        ({"name": "x", "model": "m", "endpoints": ["http://h"], "colour": 1}, "colour"),
        ({"name": "x", "endpoints": ["http://h"]}, "model"),
    ],
)
async def test_invalid_expert_rejected(admin: httpx.AsyncClient, body: dict, needle: str) -> None:
    r = await admin.post("/admin/experts", json=body)
    assert r.status_code == 400
    assert needle in r.json()["error"]["message"]


async def test_api_keys_and_rate_limit(admin: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    chat = {"model": "alpha", "messages": MSG}
    r = await anon.post("/v1/chat/completions", json=chat)
    assert r.status_code == 401 and "Missing API key" in r.json()["error"]["message"]
    r = await anon.post(
        "/v1/chat/completions", json=chat, headers={"authorization": "Bearer coe-sk-nope"}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    created = (await admin.post("/admin/keys", json={"name": "app", "rate_limit_rpm": 3})).json()
    secret = created["key"]
    assert secret.startswith("coe-sk-")
    listed = (await admin.get("/admin/keys")).text
    assert secret not in listed and created["id"] in listed
    auth = {"authorization": f"Bearer {secret}"}
    codes = [
        (await anon.post("/v1/chat/completions", json=chat, headers=auth)).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    r = await anon.get("/v1/models", headers=auth)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert (await admin.delete(f"/admin/keys/{created['id']}")).status_code == 204
    assert (await anon.get("/v1/models", headers=auth)).status_code == 401
    assert (await admin.delete(f"/admin/keys/{created['id']}")).status_code == 404


async def test_metrics_content(admin: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    key = (await admin.post("/admin/keys", json={"name": "metrics"})).json()["key"]
    auth = {"authorization": f"Bearer {key}"}
    chat = {"model": "coe/auto", "messages": MSG}
    await anon.post("/v1/chat/completions", json=chat, headers=auth)
    text = (await anon.get("/metrics")).text
    assert 'coe_requests_total{method="POST",path="/v1/chat/completions",status="200"}' in text
    assert 'coe_request_latency_seconds_bucket{le="0.005",path="/v1/chat/completions"}' in text
    assert "coe_rate_limited_total" in text and "coe_registry_version" in text
    assert 'coe_route_decisions_total{expert="alpha",router="default"}' in text
    assert 'coe_tokens_total{expert="alpha",kind="completion"}' in text
    assert 'coe_expert_latency_seconds_count{expert="alpha",outcome="ok"} 1.0' in text


async def test_request_id_header_everywhere(shared_anon: httpx.AsyncClient) -> None:
    r = await shared_anon.get("/v1/nothing", headers={"x-request-id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    r = await shared_anon.get("/health", headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"].startswith("req-")


# -- over real HTTP ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("up") as up:
        yield up


@pytest.fixture
def real_admin(served_upstream: FakeUpstream) -> Iterator[httpx.Client]:
    app = create_app(admin_settings(), config_for(served_upstream.base_url))
    server = ServedApp(app).start()
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as c:
        yield c
    server.stop()


def test_health_probe(real_admin: httpx.Client) -> None:
    admin = real_admin
    r = admin.get("/admin/experts/alpha/health").json()
    assert r["ok"] is False  # the fake serves model "up", the expert asks for "m"
    assert r["endpoints"][0]["health"] == 200 and r["endpoints"][0]["models"] == ["up"]
    admin.patch("/admin/experts/alpha", json={"model": "up"})
    assert admin.get("/admin/experts/alpha/health").json()["ok"] is True
    admin.post(
        "/admin/experts", json={"name": "gone", "model": "m", "endpoints": ["http://127.0.0.1:9"]}
    )
    dead = admin.get("/admin/experts/gone/health").json()
    assert dead["ok"] is False and "ConnectError" in dead["endpoints"][0]["error"]
    admin.delete("/admin/experts/gone")
