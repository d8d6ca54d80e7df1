"""Slow and oversized clients against a real `coe serve` process; bounds that need no
socket in process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from coe.config import Settings
from coe.experts.schema import CoeConfig
from tests.support.asgi import HostRouter, gateway_client
from tests.support.net import free_port, wait_healthy

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "experts": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:9"]}],
    "default_expert": "a",
    "pipelines": {"auto": {"routers": ["default"]}},
    "routers_dirs": [str(REPO / "routers")],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    cfg = tmp_path_factory.mktemp("hard") / "experts.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    port = free_port()
    env = {
        **os.environ,
        "COE_DEV_MODE": "1",
        "COE_BODY_TIMEOUT_S": "1",
        "COE_MAX_HEADER_BYTES": "4096",
        "COE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "coe.cli", "serve", "-c", str(cfg), "--port", str(port)], env=env
    )
    wait_healthy(f"http://127.0.0.1:{port}")
    yield port
    proc.terminate()
    proc.wait(timeout=15)


def raw_request(port: int, head: bytes, body_parts: list[bytes], pause_s: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for part in body_parts:
            time.sleep(pause_s)
            try:
                s.sendall(part)
            except OSError:
                break
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_slow_body_gets_408(served: int) -> None:
    body = b'{"model": "a", "messages": [{"role": "user", "content": "hi"}]}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    started = time.monotonic()
    reply = raw_request(served, head, [body[:10], body[10:]], pause_s=2.0)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"not received within 1 s" in reply
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "headers",
    [
        {"x-big": "a" * 20000},  # one field over the limit
        {f"x-h{i}": "b" * 100 for i in range(50)},  # many small fields adding up
    ],
    ids=["one-large-field", "many-fields"],
)
def test_oversized_headers_get_431(served: int, headers: dict[str, str]) -> None:
    r = httpx.get(f"http://127.0.0.1:{served}/health", headers=headers)
    assert r.status_code == 431, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "headers_too_large"
    assert "exceed the 4096-byte limit" in error["message"]
    assert r.headers["x-request-id"].startswith("req-")


def test_headers_under_the_limit_pass(served: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{served}/health", headers={"x-big": "a" * 3000})
    assert r.status_code == 200, r.text


async def test_max_tokens_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COE_MAX_TOKENS_LIMIT", "1000")
    config = CoeConfig.model_validate(CONFIG)
    async with gateway_client(Settings(dev_mode=True), config, HostRouter()) as http:
        r = await http.post(
            "/v1/chat/completions",
            json={
                "model": "a",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5000,
            },
        )
    assert r.status_code == 400
    assert "max_tokens" in r.json()["error"]["message"]
    assert "1000" in r.json()["error"]["message"]
