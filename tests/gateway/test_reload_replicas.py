"""Two `coe serve` replicas on one Redis with DIFFERENT local experts.yaml files: a reload
stores the config for both, a rebuild reaches both, a broken config changes nothing, and
requests sent during a rebuild never see half-built routers."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coe.testing import FakeUpstream
from tests.support.net import delete_prefix, eventually, free_port, wait_healthy
from tests.support.processes import CoeProcesses

pytestmark = pytest.mark.redis
REPO = Path(__file__).resolve().parents[2]
TOKEN = "reload-replicas-admin-token-0123"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "coe/auto", "messages": [{"role": "user", "content": "hi"}]}
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# A router whose setup takes a while and leaves it unusable until done: a request that
# reaches it half built fails loudly (a programming error, not an abstention).
SLOW_ROUTER = """
import asyncio

from pydantic import BaseModel, ConfigDict

from coe.routing import Candidate, ConfigError, RouteDecision, Router


class SlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setup_s: float = 0.8
    fail: bool = False


class SlowSetup(Router):
    type_name = "slow_setup"
    Params = SlowParams

    async def setup(self):
        self.target = None
        await asyncio.sleep(self.params.setup_s)
        if self.params.fail:
            raise ConfigError("its artefacts are missing")
        self.target = self.deps.config.default_expert

    async def route(self, query, ctx):
        if self.target is None:
            raise RuntimeError(f"router {self.name} used while half built")
        return RouteDecision(
            candidates=(Candidate(self.target, 1.0),), router=self.name, reason="set up"
        )
"""


def config_for(name: str, upstream: str, plugins: Path, **slow: Any) -> dict[str, Any]:
    """A config whose only distinguishing mark is the pipeline `<name>-only`."""
    return {
        "experts": [{"name": "alpha", "model": "m", "endpoints": [upstream]}],
        "default_expert": "alpha",
        "routers": {"slow": {"type": "slow_setup", "params": slow}},
        "pipelines": {"auto": {"routers": ["slow"]}, f"{name}-only": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers"), str(plugins)],
    }


@dataclass
class Replicas:
    a: str
    b: str
    file_a: Path
    file_b: Path
    upstream: str
    plugins: Path
    procs: CoeProcesses

    def write_a(self, data: dict[str, Any] | str) -> None:
        self.file_a.write_text(data if isinstance(data, str) else yaml.safe_dump(data))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("reload-replicas")
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "slow_setup.py").write_text(SLOW_ROUTER)
    prefix = f"coe-test-reload:{uuid.uuid4().hex[:10]}:"
    env = {
        "COE_ADMIN_TOKEN": TOKEN,
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_REGISTRY_POLL_S": "30",  # notices, not the poll, must carry the changes
        "COE_LOG_LEVEL": "INFO",
    }
    procs = CoeProcesses(tmp, env)
    with FakeUpstream("up") as upstream:
        files = {}
        for name in ("a", "b"):
            (tmp / name).mkdir()
            files[name] = tmp / name / "experts.yaml"
            files[name].write_text(yaml.safe_dump(config_for(name, upstream.base_url, plugins)))
        ports = {name: free_port() for name in ("a", "b")}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        try:
            for name in ("a", "b"):  # one after the other: A's config is stored first
                procs.start(name, "serve", "-c", str(files[name]), "--port", str(ports[name]))
                wait_healthy(urls[name])
            yield Replicas(
                urls["a"], urls["b"], files["a"], files["b"], upstream.base_url, plugins, procs
            )
        finally:
            procs.stop_all()
            delete_prefix(REDIS_URL, prefix)


def pipelines(url: str) -> set[str]:
    ids = {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    return {i.removeprefix("coe/") for i in ids if i.startswith("coe/")}


def reload(url: str) -> httpx.Response:
    return httpx.post(f"{url}/admin/reload", headers=ADMIN, timeout=60)


def test_a_later_replica_serves_the_stored_config(replicas: Replicas) -> None:
    assert reload(replicas.a).status_code == 200  # whatever earlier tests did, A's file rules
    assert eventually(lambda: "a-only" in pipelines(replicas.b))
    assert "b-only" not in pipelines(replicas.b)
    assert "differs" in replicas.procs.log("b")  # B said its own file is not what it serves


def test_reload_on_one_replica_makes_the_other_route_by_its_config(replicas: Replicas) -> None:
    from_b = reload(replicas.b)  # B's file, stored for both
    assert from_b.status_code == 200, from_b.text
    assert "b-only" in from_b.json()["pipelines"]
    assert eventually(lambda: pipelines(replicas.a) == {"auto", "b-only"})
    from_a = reload(replicas.a)
    assert from_a.status_code == 200, from_a.text
    body = from_a.json()
    assert body["config_version"] > from_b.json()["config_version"]
    assert eventually(lambda: pipelines(replicas.b) == {"auto", "a-only"})
    routed = httpx.post(f"{replicas.b}/v1/route", json={**CHAT, "model": "coe/a-only"})
    assert routed.status_code == 200 and routed.json()["chosen"] == ["alpha"]
    gone = httpx.post(f"{replicas.b}/v1/route", json={**CHAT, "model": "coe/b-only"})
    assert gone.status_code == 404
    served = f"routing config version {body['config_version']} (stored by replica {body['replica']}"
    assert served in replicas.procs.log("b")


def test_rebuild_on_one_replica_rebuilds_the_other(replicas: Replicas) -> None:
    r = httpx.post(f"{replicas.a}/admin/routers/rebuild", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rebuilt"] == ["default", "slow"] and body["rebuild"] >= 1
    told = f"(rebuild {body['rebuild']} asked by replica {body['replica']})"
    assert eventually(lambda: told in replicas.procs.log("b"))
    again = httpx.post(f"{replicas.a}/admin/routers/rebuild", headers=ADMIN, timeout=60).json()
    assert again["generation"] == body["generation"] + 1
    assert again["rebuild"] == body["rebuild"] + 1


def test_requests_during_rebuilds_all_succeed(replicas: Replicas) -> None:
    assert reload(replicas.a).status_code == 200
    stop = threading.Event()
    statuses: list[int] = []

    def send(url: str) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                statuses.append(http.post(f"{url}/v1/chat/completions", json=CHAT).status_code)

    senders = [threading.Thread(target=send, args=(u,)) for u in (replicas.a, replicas.b) * 2]
    for t in senders:
        t.start()
    try:
        for _ in range(2):  # each setup takes 0.8 s on A, then on B
            r = httpx.post(f"{replicas.a}/admin/routers/rebuild", headers=ADMIN, timeout=60)
            assert r.status_code == 200, r.text
        rebuilt = f"(rebuild {r.json()['rebuild']} asked by replica"
        assert eventually(lambda: rebuilt in replicas.procs.log("b"))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in senders:
            t.join(timeout=30)
    assert len(statuses) > 20 and set(statuses) == {200}, sorted(set(statuses))


def test_a_broken_config_is_refused_and_both_keep_serving(replicas: Replicas) -> None:
    good = config_for("a", replicas.upstream, replicas.plugins)
    replicas.write_a(good)
    version = reload(replicas.a).json()["config_version"]
    assert eventually(lambda: pipelines(replicas.b) == {"auto", "a-only"})
    try:
        # invalid: refused while reading the file
        replicas.write_a({**good, "pipelines": {"auto": {"routers": ["nowhere"]}}})
        r = reload(replicas.a)
        assert r.status_code == 500 and r.json()["error"]["type"] == "config_error"
        assert "unknown router 'nowhere'" in r.json()["error"]["message"]
        # valid, but a router fails to set up: refused, naming the router and why
        replicas.write_a(config_for("broken", replicas.upstream, replicas.plugins, fail=True))
        r = reload(replicas.a)
        assert r.status_code == 500, r.text
        message = r.json()["error"]["message"]
        assert "router 'slow' (slow_setup)" in message and "artefacts are missing" in message
        for url in (replicas.a, replicas.b):
            assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200
            assert pipelines(url) == {"auto", "a-only"}
        # builds on A, not on B (its plugin folder is relative, and only A has one): B logs
        # the refusal and keeps serving the previous version
        local = replicas.file_a.parent / "local_plugins"
        local.mkdir(exist_ok=True)
        (local / "slow_setup_local.py").write_text(
            SLOW_ROUTER.replace('"slow_setup"', '"slow_setup_local"')
        )
        only_a = config_for("only-a", replicas.upstream, replicas.plugins)
        only_a["routers_dirs"] = [str(REPO / "routers"), "local_plugins"]
        only_a["routers"]["slow"]["type"] = "slow_setup_local"
        replicas.write_a(only_a)
        r = reload(replicas.a)
        assert r.status_code == 200, r.text
        refused = f"routing config version {r.json()['config_version']} refused, version"
        assert eventually(lambda: refused in replicas.procs.log("b"))
        assert pipelines(replicas.b) == {"auto", "a-only"}
        assert httpx.post(f"{replicas.b}/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        replicas.write_a(good)
        fixed = reload(replicas.a)
    assert fixed.status_code == 200 and fixed.json()["config_version"] > version
    back = f"routing config version {fixed.json()['config_version']} (stored by"
    assert eventually(lambda: back in replicas.procs.log("b"))  # B follows again
    assert pipelines(replicas.b) == {"auto", "a-only"}


def test_config_from_file_makes_a_starting_replica_set_the_config(
    replicas: Replicas, tmp_path: Path
) -> None:
    c = tmp_path / "experts.yaml"
    c.write_text(yaml.safe_dump(config_for("c", replicas.upstream, replicas.plugins)))
    port = free_port()
    replicas.procs.start("c", "serve", "-c", str(c), "--port", str(port), "--config-from-file")
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        for url in (replicas.a, replicas.b):
            assert eventually(lambda u=url: pipelines(u) == {"auto", "c-only"})  # type: ignore[misc]
    finally:
        replicas.procs.kill("c")
        assert reload(replicas.a).status_code == 200
