"""The egress policy: expert endpoints at cloud metadata or link-local addresses are refused,
over the admin API (the gateway in-process, the experts on loopback) and when experts.yaml is
loaded (`coe serve`, in-process), unless an operator allows them; the deny list wins;
loopback stays allowed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from coe.config import Settings
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, load_config
from coe.security.egress import EgressPolicy
from coe.testing import FakeUpstream
from tests.support.asgi import gateway_client
from tests.support.cli import coe_in_process
from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "egress-admin-token-0123456789"


def config_dict(*endpoints: str) -> dict[str, Any]:
    return {
        "experts": [
            {"name": f"e{i}", "model": "up", "endpoints": [url]} for i, url in enumerate(endpoints)
        ],
        "default_expert": "e0",
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("up") as up:
        yield up


Admin = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def admin(upstream: FakeUpstream) -> AsyncIterator[Admin]:
    """A gateway in-process with the egress settings given, and its admin client (the
    experts it calls and probes are reached over loopback)."""
    async with AsyncExitStack() as stack:

        async def start(*extra: str, **env: str) -> httpx.AsyncClient:
            settings = Settings(admin_token=TOKEN, **env)  # type: ignore[arg-type]
            config = CoeConfig.model_validate(config_dict(upstream.base_url, *extra))
            headers = {"authorization": f"Bearer {TOKEN}"}
            return await stack.enter_async_context(
                gateway_client(settings, config, headers=headers, timeout=30)
            )

        yield start


async def new_expert(client: httpx.AsyncClient, name: str, url: str) -> httpx.Response:
    body = {"name": name, "model": "up", "endpoints": [url]}
    return await client.post("/admin/experts", json=body)


@pytest.mark.parametrize(
    "url,kind,allow",
    [
        ("http://169.254.169.254/latest/meta-data", "cloud metadata address", "169.254.169.254"),
        ("http://[fd00:ec2::254]/", "cloud metadata address", "fd00:ec2::254"),
        ("http://100.100.100.200/", "cloud metadata address", "100.100.100.200"),
        ("http://metadata.google.internal/", "metadata host name", "metadata.google.internal"),
        ("http://169.254.10.20:8000", "link-local address", "169.254.10.20"),
        ("http://[fe80::1]:8000", "link-local address", "fe80::1"),
        ("http://2852039166/", "cloud metadata address", "169.254.169.254"),  # 169.254.169.254
    ],
)
async def test_metadata_and_link_local_endpoints_are_refused_naming_the_setting(
    admin: Admin, url: str, kind: str, allow: str
) -> None:
    client = await admin()
    r = await new_expert(client, "sneaky", url)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "egress_refused" and error["param"] == "endpoints"
    assert kind in error["message"] and f"add {allow} to COE_EGRESS_ALLOW" in error["message"]
    assert (await client.get("/admin/experts/sneaky")).status_code == 404  # none registered
    # the same endpoint slipped in by an update is refused too
    patched = await client.patch("/admin/experts/e0", json={"endpoints": [url]})
    assert patched.status_code == 400 and "COE_EGRESS_ALLOW" in patched.text


async def test_loopback_is_allowed_and_credentials_in_a_refusal_are_masked(
    admin: Admin, upstream: FakeUpstream
) -> None:
    client = await admin()
    assert (await new_expert(client, "local", upstream.base_url)).status_code == 201
    localhost = f"http://localhost:{upstream.port}"
    assert (await new_expert(client, "named", localhost)).status_code == 201
    r = await new_expert(client, "bad", "http://u:S3CRETPW@169.254.169.254/")
    assert r.status_code == 400 and "S3CRETPW" not in r.text and "u:***@" in r.text


async def test_the_allow_list_opens_a_refused_range_and_the_deny_list_wins(
    admin: Admin, upstream: FakeUpstream
) -> None:
    opened = await admin(egress_allow="169.254.0.0/16, metadata.google.internal")
    assert (await new_expert(opened, "meta", "http://169.254.169.254/")).status_code == 201
    assert (await new_expert(opened, "gce", "http://metadata.google.internal/")).status_code == 201
    assert (await new_expert(opened, "other", "http://[fd00:ec2::254]/")).status_code == 400

    both = await admin(egress_allow="169.254.0.0/16", egress_deny="169.254.169.254/32")
    r = await new_expert(both, "meta", "http://169.254.169.254/")
    assert r.status_code == 400 and "COE_EGRESS_DENY" in r.json()["error"]["message"]
    assert (await new_expert(both, "ll", "http://169.254.1.1/")).status_code == 201

    # a deny list closes what is allowed by default; a name is checked by what it resolves to
    closed = await admin(egress_deny="127.0.0.0/8")
    named = await new_expert(closed, "named", f"http://localhost:{upstream.port}")
    assert named.status_code == 400 and "'127.0.0.0/8' in COE_EGRESS_DENY" in named.text
    by_name = await admin(egress_deny="localhost")
    localhost = f"http://localhost:{upstream.port}"
    assert (await new_expert(by_name, "named", localhost)).status_code == 400
    assert (await new_expert(by_name, "ip", upstream.base_url)).status_code == 201


async def test_a_health_probe_of_a_refused_endpoint_is_not_sent(admin: Admin) -> None:
    # registered before the policy was in force (a stored registry): the probe is refused
    client = await admin("http://169.254.169.254/")
    r = await client.get("/admin/experts/e1/health")
    assert r.status_code == 400 and "COE_EGRESS_ALLOW" in r.text
    assert (await client.get("/admin/experts/e0/health")).status_code == 200


def test_a_bad_egress_setting_is_a_config_error_naming_it() -> None:
    settings = Settings(egress_allow="10.0.0.0/8, not a host!")
    with pytest.raises(ConfigError, match="COE_EGRESS_ALLOW: 'not a host!'"):
        EgressPolicy.from_settings(settings)


async def _started_serving(server: uvicorn.Server) -> None:
    raise AssertionError("the gateway started serving")


def test_experts_yaml_with_a_metadata_endpoint_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(yaml.safe_dump(config_dict("http://127.0.0.1:1", "http://169.254.169.254/")))
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(cfg) in err.value.message and "experts.1.endpoints (e1)" in err.value.message
    assert "COE_EGRESS_ALLOW" in err.value.message
    allowed = EgressPolicy.from_settings(Settings(egress_allow="169.254.169.254"))
    assert len(load_config(cfg, allowed).experts) == 2
    # `coe serve` (in-process, its uvicorn included) refuses to start on it, and says why;
    # a gateway that got as far as serving fails the test instead of hanging it
    monkeypatch.setattr(uvicorn.Server, "main_loop", _started_serving)
    done = coe_in_process("serve", "-c", str(cfg), "--port", str(free_port()), "--dev", cwd=REPO)
    assert done.returncode != 0
    assert "169.254.169.254" in done.stderr and "COE_EGRESS_ALLOW" in done.stderr
