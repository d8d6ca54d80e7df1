"""An overloaded gateway sheds load instead of queueing without bound, against a real
`coe serve` process: past COE_MAX_IN_FLIGHT chat requests, more get 503 server_overloaded
with Retry-After at once; a client that gives up before its body is read costs one log
line, not a traceback."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from coe.testing import FakeUpstream, Fault
from tests.support.net import free_port, wait_healthy
from tests.support.processes import CoeProcesses, coe_processes

REPO = Path(__file__).resolve().parents[2]
ASK = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, CoeProcesses]]:
    tmp = tmp_path_factory.mktemp("overload")
    with FakeUpstream("a") as up:
        up.fault = Fault(delay_s=1.5)  # every answer takes 1.5 s
        cfg = tmp / "experts.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "experts": [{"name": "a", "model": "m", "endpoints": [up.base_url]}],
                    "default_expert": "a",
                    "pipelines": {"auto": {"routers": ["default"]}},
                    "routers_dirs": [str(REPO / "routers")],
                }
            )
        )
        port = free_port()
        env = {"COE_EXPERTS_FILE": str(cfg), "COE_MAX_IN_FLIGHT": "2", "COE_LOG_LEVEL": "INFO"}
        with coe_processes(tmp, env) as procs:
            procs.start("gateway", "serve", "--dev", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base)
            yield base, procs


def test_past_the_limit_requests_are_refused_at_once(gateway: tuple[str, CoeProcesses]) -> None:
    base, _ = gateway

    def ask() -> tuple[int, float, httpx.Response]:
        started = time.monotonic()
        r = httpx.post(f"{base}/v1/chat/completions", json=ASK, timeout=30)
        return r.status_code, time.monotonic() - started, r

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        first = [pool.submit(ask) for _ in range(2)]
        time.sleep(0.5)  # both admitted and waiting on the slow expert
        rest = [pool.submit(ask) for _ in range(3)]
        admitted = [f.result() for f in first]
        refused = [f.result() for f in rest]
    assert [s for s, _, _ in admitted] == [200, 200]
    for status, took, r in refused:
        assert status == 503, r.text
        assert r.json()["error"]["code"] == "server_overloaded"
        assert r.headers["retry-after"] == "1"
        assert took < 1.0  # refused, not queued behind the 1.5 s answers
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    r = httpx.post(f"{base}/v1/chat/completions", json=ASK, timeout=30)
    assert r.status_code == 200, r.text  # admitted again once the others finished


def test_a_client_gone_before_its_body_costs_no_traceback(
    gateway: tuple[str, CoeProcesses],
) -> None:
    base, procs = gateway
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            b'\r\ncontent-length: 1000\r\n\r\n{"model": '
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while "client went away" not in procs.log("gateway"):
        assert time.monotonic() < deadline, procs.log("gateway")[-2000:]
        time.sleep(0.1)
    log = procs.log("gateway")
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
