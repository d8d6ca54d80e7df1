"""Fuzz the OpenAI endpoints from our own OpenAPI schema: no input may cause a 5xx.

Only /v1 is fuzzed: admin writes would register random upstream URLs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.testing import FakeUpstream
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with FakeUpstream("fuzz") as up:
        config = CoeConfig.model_validate(
            {
                "experts": [
                    {
                        "name": "alpha",
                        "model": "m",
                        "endpoints": [up.base_url],
                        "limits": {"timeout_s": 5},
                    }
                ],
                "default_expert": "alpha",
                "pipelines": {"auto": {"routers": ["default"]}},
                "routers_dirs": [str(REPO / "routers")],
            }
        )
        server = ServedApp(create_app(Settings(dev_mode=True, max_body_bytes=64 * 1024), config))
        server.start()
        yield server.base_url
        server.stop()


def fuzz_operation(operation: Any, examples: int) -> int:
    """Send `examples` generated requests to one operation; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def run(case: Any) -> None:
        nonlocal sent
        response = case.call()
        sent += 1
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"}, body
            assert isinstance(body["error"]["message"], str) and body["error"]["message"]

    run()
    return sent


def test_openai_endpoints_never_5xx(gateway_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json").include(
        path_regex="^/v1/"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {f"{op.method.upper()} {op.path}" for op in operations}
    assert paths == {
        "POST /v1/chat/completions",
        "GET /v1/models",
        "POST /v1/route",
        "POST /v1/batches",
        "GET /v1/batches/{batch_id}",
        "POST /v1/batches/{batch_id}/cancel",
        "GET /v1/batches/{batch_id}/results",
        "GET /v1/batches",
        "POST /v1/files",
        "GET /v1/files",
        "GET /v1/files/{file_id}",
        "GET /v1/files/{file_id}/content",
        "DELETE /v1/files/{file_id}",
    }
    for op in operations:
        sent = fuzz_operation(op, examples=int(os.environ.get("COE_FUZZ_EXAMPLES", "100")))
        assert sent > 10 or op.path == "/v1/models"  # it takes no input
