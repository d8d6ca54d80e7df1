"""/metrics behind COE_METRICS_TOKEN, the same on a real `coe serve` process and on a real
`coe worker --metrics-port`: 401 in OpenAI's error shape without the token or with a wrong
one, 200 with it; open when the token is unset; a weak token refused at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from coe.config import Settings
from coe.errors import ConfigError
from coe.observability.metrics import checked_metrics_token
from tests.support.net import delete_prefix, free_port
from tests.support.processes import CoeProcesses, coe_processes

pytestmark = pytest.mark.redis
REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
METRICS_TOKEN = "metrics-token-0123456789abcdef"
ADMIN_TOKEN = "metrics-admin-token-0123456789"


def wait_listening(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


@pytest.fixture
def experts_file(tmp_path: Path) -> Path:
    cfg = tmp_path / "experts.yaml"
    config = {
        "experts": [{"name": "alpha", "model": "m", "endpoints": ["http://127.0.0.1:9"]}],
        "default_expert": "alpha",
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def started(
    procs: CoeProcesses, experts_file: Path, token: str | None, prefix: str
) -> tuple[str, str]:
    """A gateway and a worker with metrics on; their /metrics URLs."""
    env = {
        "COE_ADMIN_TOKEN": ADMIN_TOKEN,
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_METRICS_TOKEN": token or "",
    }
    gateway, worker = free_port(), free_port()
    procs.start("serve", "serve", "-c", str(experts_file), "--port", str(gateway), env=env)
    procs.start("worker", "worker", "-c", str(experts_file), "--metrics-port", str(worker), env=env)
    urls = f"http://127.0.0.1:{gateway}/metrics", f"http://127.0.0.1:{worker}/metrics"
    for url in urls:
        wait_listening(url)
    return urls


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"coe-test-metrics:{uuid.uuid4().hex[:10]}:"
    yield value
    delete_prefix(REDIS_URL, value)


def test_metrics_need_the_token_when_one_is_set(
    experts_file: Path, tmp_path: Path, prefix: str
) -> None:
    with coe_processes(tmp_path) as procs:
        for url in started(procs, experts_file, METRICS_TOKEN, prefix):
            for headers in (
                {},
                {"authorization": "Bearer not-the-metrics-token-0123456"},
                {"authorization": f"Basic {METRICS_TOKEN}"},
            ):
                refused = httpx.get(url, headers=headers, timeout=10)
                assert refused.status_code == 401, (url, headers, refused.text)
                error = refused.json()["error"]
                assert error["type"] == "authentication_error"
                assert "COE_METRICS_TOKEN" in error["message"]
                assert "coe_" not in refused.text
            allowed = httpx.get(
                url, headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
            )
            assert allowed.status_code == 200, (url, allowed.text)
            assert "coe_batch_items" in allowed.text or "coe_requests" in allowed.text


def test_metrics_are_open_without_a_token(experts_file: Path, tmp_path: Path, prefix: str) -> None:
    with coe_processes(tmp_path) as procs:
        for url in started(procs, experts_file, None, prefix):
            answer = httpx.get(url, timeout=10)
            assert answer.status_code == 200, (url, answer.text)
            assert "coe_" in answer.text


def test_a_weak_metrics_token_stops_the_process_at_start(experts_file: Path) -> None:
    with pytest.raises(ConfigError, match="COE_METRICS_TOKEN"):
        checked_metrics_token(Settings(metrics_token="changeme"))  # type: ignore[arg-type]
    assert checked_metrics_token(Settings(metrics_token="")) is None  # type: ignore[arg-type]
    env = {**os.environ, "COE_REDIS_URL": REDIS_URL, "COE_METRICS_TOKEN": "short"}
    done = subprocess.run(
        [sys.executable, "-m", "coe.cli", "worker", "-c", str(experts_file), "--metrics-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "COE_METRICS_TOKEN" in done.stderr
