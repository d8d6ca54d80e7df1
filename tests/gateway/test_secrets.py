"""Secrets never leak and upstream errors are honest, against a real `coe serve` process.

The expert's endpoint carries `user:S3CRETPW@` credentials and an api key, and points at a
FakeUpstream that fails on demand. No client response (chat JSON, stream events, admin API,
/metrics) shows the password, the key, the upstream's body or (outside the admin API) its
host:port; each error names the expert, the kind of failure and the request id; the
gateway's log has the details under that request id, and never the password.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from coe.experts.schema import ExpertSpec
from coe.gateway.admin_wire import ExpertPublic, ExpertUpdate
from coe.observability.logs import RedactingFilter
from coe.testing import FakeUpstream, Fault
from tests.support.net import free_port, wait_healthy
from tests.support.processes import CoeProcesses, coe_processes

TOKEN = "secrets-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
PASSWORD = "S3CRETPW"
API_KEY = "sk-EXPERTKEY-0123456789"


class Gateway:
    def __init__(self, url: str, procs: CoeProcesses, upstream: FakeUpstream, closed: int):
        self.url = url
        self.procs = procs
        self.upstream = upstream
        self.closed = closed  # a port nothing listens on

    @property
    def internal(self) -> list[str]:
        """What a chat client must never see: credentials and where the experts live."""
        return [
            PASSWORD,
            API_KEY,
            "127.0.0.1",
            f":{self.upstream.port}",
            f":{self.closed}",
            "localhost",
        ]

    def log(self) -> str:
        return self.procs.log("gateway")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("secrets")
    closed = free_port()
    with FakeUpstream("up") as upstream:
        creds = f"http://user:{PASSWORD}@127.0.0.1"
        config = {
            "experts": [
                {
                    "name": "broken",
                    "model": "up",
                    "endpoints": [f"{creds}:{upstream.port}"],
                    "api_key": API_KEY,
                    "limits": {"timeout_s": 1, "connect_timeout_s": 1},
                },
                {"name": "gone", "model": "m", "endpoints": [f"{creds}:{closed}"]},
            ],
            "default_expert": "broken",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(Path(__file__).resolve().parents[2] / "routers")],
        }
        cfg = tmp / "experts.yaml"
        cfg.write_text(yaml.safe_dump(config))
        port = free_port()
        with coe_processes(tmp, {"COE_ADMIN_TOKEN": TOKEN}) as procs:
            procs.start("gateway", "serve", "-c", str(cfg), "--port", str(port))
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url)
            yield Gateway(url, procs, upstream, closed)


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.upstream.fault = Fault()
    return gateway


def chat(
    gw: Gateway, model: str, stream: bool = False, say: str = "hi"
) -> tuple[httpx.Response, str]:
    body = {"model": model, "messages": [{"role": "user", "content": say}], "stream": stream}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
    return r, r.text


def assert_clean(text: str, forbidden: list[str]) -> None:
    for leak in forbidden:
        assert leak not in text, f"{leak!r} leaked into: {text[:600]}"


def logged_under(gw: Gateway, rid: str, needle: str, timeout_s: float = 10) -> str:
    """The gateway log's lines for request `rid`, once one of them contains `needle`."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [ln for ln in gw.log().splitlines() if f"[{rid}]" in ln]
        if any(needle in ln for ln in lines) or time.monotonic() > deadline:
            return "\n".join(lines)
        time.sleep(0.1)


FAILURES = [
    # (expert, fault, status, words the client's message must contain, code, in the log)
    ("broken", Fault(mode="status", status=500), 502, "answered 500", "upstream_status", None),
    ("broken", Fault(mode="hang"), 504, "timed out", "upstream_timeout", "ReadTimeout"),
    ("gone", Fault(), 502, "unreachable", "expert_unreachable", "ConnectError"),
    ("broken", Fault(mode="status", status=401), 502, "credentials", "expert_auth_failed", None),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    "expert,fault,status,words,code,logged", FAILURES, ids=["5xx", "timeout", "closed", "401"]
)
def test_an_expert_failure_names_expert_kind_and_request_id_and_nothing_internal(
    gw: Gateway,
    expert: str,
    fault: Fault,
    status: int,
    words: str,
    code: str,
    logged: str | None,
    stream: bool,
) -> None:
    gw.upstream.fault = fault
    r, text = chat(gw, expert, stream=stream)
    rid = r.headers["x-request-id"]
    assert r.status_code == status, text
    error = r.json()["error"]
    assert expert in error["message"] and words in error["message"]
    assert rid in error["message"] and error["code"] == code
    assert_clean(text, [*gw.internal, "injected"])
    # the operator finds what the client was not told, under the same request id
    port = gw.upstream.port if expert == "broken" else gw.closed
    lines = logged_under(gw, rid, f"127.0.0.1:{port}")
    assert "WARNING" in lines and f"127.0.0.1:{port}" in lines and "user:***@" in lines
    assert logged is None or logged in lines
    if fault.mode == "status":
        assert f"injected {fault.status}" in lines  # the upstream's body, for the operator
    assert PASSWORD not in gw.log() and API_KEY not in gw.log()


def test_a_stream_that_breaks_ends_with_a_clean_error_event(gw: Gateway) -> None:
    gw.upstream.fault = Fault(mode="cut", cut_after=2)
    r, text = chat(gw, "broken", stream=True, say="several words to stream back")
    rid = r.headers["x-request-id"]
    assert r.status_code == 200
    events = [ln.removeprefix("data: ") for ln in text.splitlines() if ln.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_interrupted"
    assert "broken" in error["message"] and rid in error["message"]
    assert_clean(text, gw.internal)
    assert "user:***@" in logged_under(gw, rid, "user:***@")


def test_the_clients_own_mistake_stays_a_400_with_the_experts_reason(gw: Gateway) -> None:
    gw.upstream.fault = Fault(mode="status", status=400)
    r, text = chat(gw, "broken")
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    # a reason with no URL or host in it passes through (docs/configuration.md)
    assert "rejected the request (upstream 400): injected 400" in error["message"]
    assert_clean(text, gw.internal)


def test_admin_api_and_metrics_never_show_the_password_or_the_key(gw: Gateway) -> None:
    listed = httpx.get(f"{gw.url}/admin/experts", headers=ADMIN)
    shown = {e["name"]: e for e in listed.json()["data"]}
    assert shown["broken"]["endpoints"] == [f"http://user:***@127.0.0.1:{gw.upstream.port}"]
    assert shown["broken"]["has_api_key"] is True
    one = httpx.get(f"{gw.url}/admin/experts/broken", headers=ADMIN)
    health = httpx.get(f"{gw.url}/admin/experts/broken/health", headers=ADMIN, timeout=30)
    dead = httpx.get(f"{gw.url}/admin/experts/gone/health", headers=ADMIN, timeout=30)
    assert health.json()["ok"] is True and dead.json()["ok"] is False
    new = {
        "name": "fresh",
        "model": "up",
        "endpoints": [f"http://admin:{PASSWORD}@127.0.0.1:{gw.upstream.port}"],
        "api_key": API_KEY,
    }
    created = httpx.post(f"{gw.url}/admin/experts", json=new, headers=ADMIN)
    assert created.status_code == 201
    assert created.json()["endpoints"] == [f"http://admin:***@127.0.0.1:{gw.upstream.port}"]
    patch = {"endpoints": created.json()["endpoints"], "description": "patched"}
    patched = httpx.patch(f"{gw.url}/admin/experts/fresh", json=patch, headers=ADMIN)
    assert patched.status_code == 200
    answered, _ = chat(gw, "fresh")
    assert answered.status_code == 200
    httpx.delete(f"{gw.url}/admin/experts/fresh", headers=ADMIN)
    for r in (listed, one, health, dead, created, patched):
        assert_clean(r.text, [PASSWORD, API_KEY])
    chat(gw, "gone")  # a failure recorded in the metrics
    metrics = httpx.get(f"{gw.url}/metrics")
    assert metrics.status_code == 200 and 'expert="gone"' in metrics.text
    assert_clean(metrics.text, gw.internal)


def test_an_endpoint_sent_back_as_shown_keeps_its_password() -> None:
    current = ExpertSpec.model_validate(
        {"name": "a", "model": "m", "endpoints": [f"http://u:{PASSWORD}@h:1", "http://o:2"]}
    )
    shown = ExpertPublic.of(current).endpoints
    assert shown == ["http://u:***@h:1", "http://o:2"]
    kept = ExpertUpdate.model_validate({"endpoints": shown[:1]}).apply(current)
    assert kept.base_urls() == [f"http://u:{PASSWORD}@h:1"]
    changed = ExpertUpdate.model_validate({"endpoints": ["http://u:new@h:1"]}).apply(current)
    assert changed.base_urls() == ["http://u:new@h:1"]


def test_the_log_filter_masks_passwords_and_bearer_tokens_in_every_record() -> None:
    record = logging.LogRecord(
        "any", logging.WARNING, __file__, 1, "calling %s with %s", None, None
    )
    record.args = (f"http://u:{PASSWORD}@h:1/v1", f"Authorization: Bearer {API_KEY}")
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "calling http://u:***@h:1/v1 with Authorization: Bearer ***"
    try:
        raise RuntimeError(f"failed at http://u:{PASSWORD}@h:1")
    except RuntimeError:
        failing = logging.LogRecord("any", logging.ERROR, __file__, 1, "x", None, sys.exc_info())
    RedactingFilter().filter(failing)
    assert failing.exc_text is not None and PASSWORD not in failing.exc_text
    assert "u:***@h:1" in failing.exc_text
