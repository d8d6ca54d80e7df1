"""Fuzz the OpenAI endpoints from our own OpenAPI schema, with valid and invalid inputs.

Positive mode: requests that fit the schema never get a 5xx, and any 4xx is in OpenAI's
error shape. Negative mode: an invalid body gets a 4xx in that shape. Chat and route
requests name a real expert or pipeline often enough that a real router (the embedding
router on the real encoder) routes them. The admin API is fuzzed too, with every valid
endpoint URL it is sent pointed at a loopback fake upstream. The gateway is reached
in-process, as an ASGI app (schemathesis runs its lifespan); the fake upstream it calls
listens on loopback.

More examples: COE_FUZZ_EXAMPLES=5000 (per operation and mode; see docs/testing.md).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import HttpUrl, TypeAdapter, ValidationError
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.testing import FakeUpstream

REPO = Path(__file__).resolve().parents[2]
EXPERTS = ["alpha", "beta"]
MODELS = [*EXPERTS, "coe/auto", "coe/duo"]
ROUTES = {
    "alpha": ["write a python function", "fix this javascript bug", "explain a SQL join"],
    "beta": ["bake a chocolate cake", "a recipe for bread", "how long to boil an egg"],
}
UTTERANCES = ["write a python function to sort a list", "a recipe for chocolate cake"]
# Per operation and mode; chat and route (where routing runs) get more.
EXAMPLES = int(os.environ.get("COE_FUZZ_EXAMPLES", "0")) or None
ROUTED_OPS = {"POST /v1/chat/completions", "POST /v1/route"}
OPERATIONS = {
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
ONLY_AN_ID = {
    "GET /v1/batches/{batch_id}",
    "POST /v1/batches/{batch_id}/cancel",
    "GET /v1/batches/{batch_id}/results",
    "GET /v1/files/{file_id}",
    "GET /v1/files/{file_id}/content",
    "DELETE /v1/files/{file_id}",
}


def examples_for(op: str) -> int:
    if EXAMPLES is not None:
        return EXAMPLES
    return 250 if op in ROUTED_OPS else 30


@pytest.fixture(scope="module")
def gateway_app() -> Iterator[FastAPI]:
    with FakeUpstream("fuzz") as up:
        config = CoeConfig.model_validate(
            {
                "experts": [
                    {
                        "name": e,
                        "model": "m",
                        "endpoints": [up.base_url],
                        "limits": {"timeout_s": 5},
                    }
                    for e in EXPERTS
                ],
                "default_expert": "alpha",
                "routers": {
                    "topic": {
                        "type": "embedding",
                        "params": {"routes": ROUTES, "k": 2, "threshold": 0.2},
                    }
                },
                "pipelines": {
                    "auto": {"routers": ["topic", "default"]},
                    "duo": {
                        "routers": ["topic", "default"],
                        "k": 2,
                        "aggregation": {"strategy": "synthesize", "aggregator": "alpha"},
                    },
                },
                "routers_dirs": [str(REPO / "routers")],
            }
        )
        settings = Settings(dev_mode=True, max_body_bytes=64 * 1024)
        try:
            yield create_app(settings, config)
        finally:
            asgi.shutdown_lifespans()  # the app's shutdown, before its upstream goes


def assert_openai_error(response: Any, case: Any) -> None:
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(("not JSON", case.as_curl_command(), response.text[:300])) from None
    assert isinstance(body, dict) and set(body) == {"error"}, (case.as_curl_command(), body)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error


def steer(body: Any, model: str | None, question: str | None) -> None:
    """Point a generated (valid) chat or route body at a real model, and end it with a user
    message (a routable question when one is drawn), in place."""
    if not isinstance(body, dict):
        return
    if model is not None and "model" in body:
        body["model"] = model
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        # a request needs a user message to route
        content = question or str(messages[-1].get("content"))
        messages[-1] = {"role": "user", "content": content}
    if question is not None and isinstance(body.get("query"), str):
        body["query"] = question


def operations_of(schema: Any) -> list[Any]:
    """The schema's operations (`ok()` raises if one could not be read)."""
    return [result.ok() for result in schema.get_all_operations()]


def header(response: Any, name: str) -> str | None:
    """A response header (schemathesis keeps each header's values in a list)."""
    values = response.headers.get(name)
    return values[0] if values else None


def decided_by(response: Any) -> str | None:
    """The router named in a /v1/route answer."""
    try:
        body = response.json()
    except ValueError:
        return None
    return (
        body.get("router") if isinstance(body, dict) and body.get("object") == "coe.route" else None
    )


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    prepare: Callable[[Any, str | None, str | None], None] | None = None,
    headers: dict[str, str] | None = None,
    strict: bool = True,
) -> Counter[str]:
    """Send up to `examples` generated requests to one operation; returns what came back
    (status codes, and `routed:<router>` for chat/route answers a router decided).
    `prepare(case, model, question)` may change a case before it is sent; by default valid
    chat and route bodies are steered to a real model and a routable question. Not
    `strict`: an invalid body that is accepted is counted, not failed."""
    seen: Counter[str] = Counter()
    strategy = st.tuples(
        operation.as_strategy(generation_mode=mode),
        st.sampled_from([*MODELS, *MODELS, None]),  # a real model name, most of the time
        st.sampled_from([*UTTERANCES, None, None]),  # a question some route is close to
    )

    @given(drawn=strategy)
    @settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def run(drawn: tuple[Any, str | None, str | None]) -> None:
        case, model, question = drawn
        if prepare is not None:
            prepare(case, model, question)
        elif mode.is_positive:  # an invalid body is left as generated: steering might fix it
            steer(case.body, model, question)
        response = case.call(headers=headers, timeout=30)
        seen[str(response.status_code)] += 1
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        invalid = {loc.value for loc, c in case.meta.components.items() if c.mode.is_negative}
        if "body" in invalid and response.status_code < 400 and not strict:
            seen["invalid-body-accepted"] += 1
        elif "body" in invalid:
            # an invalid body is refused, not served: nothing is left to guess for the client
            assert 400 <= response.status_code < 500, (
                case.as_curl_command(),
                response.status_code,
                response.text[:300],
            )
            seen["invalid-body-refused"] += 1
        # (invalid query, path or header parts may be ignored, as unknown query names are)
        if response.status_code >= 400:
            assert_openai_error(response, case)
        elif router := header(response, "x-coe-router") or decided_by(response):
            seen[f"routed:{router}"] += 1

    try:
        run()
    except Unsatisfiable:  # the operation has no input that can be made invalid
        seen["no-invalid-input"] += 1
    return seen


@pytest.mark.embed
def test_openai_endpoints_fuzzed_with_valid_and_invalid_input(gateway_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", gateway_app).include(
        path_regex="^/v1/"
    )
    operations = {f"{op.method.upper()} {op.path}": op for op in operations_of(schema)}
    assert set(operations) == OPERATIONS
    started = time.monotonic()
    totals: dict[str, Counter[str]] = {}
    for name, op in sorted(operations.items()):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode.is_negative and name == "GET /v1/models":
                continue  # it takes no input: nothing to make invalid
            totals[f"{mode.value} {name}"] = fuzz_operation(op, mode, examples_for(name))
    elapsed = time.monotonic() - started
    print(f"fuzzed {sum(sum(c.values()) for c in totals.values())} requests in {elapsed:.1f} s")
    for key, seen in totals.items():
        print(f"  {key}: {dict(seen)}")
    # every operation was reached with enough cases; those that take only an id in the
    # path have no input that can be invalid
    for key, seen in totals.items():
        if key.startswith("negative") and key.split(" ", 1)[1] in ONLY_AN_ID:
            assert seen == {"no-invalid-input": 1}, (key, seen)
        else:
            assert seen.total() - seen["invalid-body-refused"] > 10 or "models" in key, (key, seen)
    for op in ("POST /v1/chat/completions", "POST /v1/route", "POST /v1/batches"):
        assert totals[f"negative {op}"]["invalid-body-refused"] > 10, totals[f"negative {op}"]
    for op in ROUTED_OPS:
        seen = totals[f"positive {op}"]
        assert seen["200"] > 10, (op, seen)
        assert seen["routed:topic"] > 0, (op, seen)  # the embedding router decided some
    # the routed requests really went through routing: its decisions are counted
    with asgi.get_client(gateway_app) as client:
        metrics = client.get("/metrics", timeout=10).text
    assert 'coe_route_decisions_total{expert="alpha",router="topic"}' in metrics


# -- the admin API ---------------------------------------------------------------------------
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
ADMIN_EXAMPLES = EXAMPLES or 30
HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def loopback(url: Any, upstream: str) -> Any:
    """A generated endpoint that is a valid URL, pointed at the fake upstream; anything else
    as it was (an invalid value stays invalid: it can be neither registered nor probed)."""
    try:
        HTTP_URL.validate_python(url)
    except ValidationError:
        return url
    return upstream


@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    with FakeUpstream("fuzz-admin") as up:
        data = {
            "experts": [{"name": "alpha", "model": "m", "endpoints": [up.base_url]}],
            "default_expert": "alpha",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
        experts_file = tmp_path_factory.mktemp("fuzz-admin") / "experts.yaml"
        experts_file.write_text(json.dumps(data))  # JSON is YAML: /admin/reload reads it
        settings = Settings(
            admin_token=ADMIN_TOKEN,
            experts_file=experts_file,
            max_body_bytes=64 * 1024,
        )
        try:
            yield create_app(settings, CoeConfig.model_validate(data)), up.base_url
        finally:
            asgi.shutdown_lifespans()


def test_admin_api_fuzzed_with_loopback_upstreams(admin_gateway: tuple[FastAPI, str]) -> None:
    app, upstream = admin_gateway
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/admin/")
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}

    def to_loopback(case: Any, _model: str | None, _question: str | None) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("endpoints"), list):
            case.body["endpoints"] = [loopback(u, upstream) for u in case.body["endpoints"]]

    totals: dict[str, Counter[str]] = {}
    for op in operations_of(schema):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Strict: the admin wire models validate strictly (no `true` for a number, no 0/1
            # for a boolean), so every invalid body must be refused.
            seen = fuzz_operation(
                op, mode, ADMIN_EXAMPLES, prepare=to_loopback, headers=auth, strict=True
            )
            totals[f"{mode.value} {op.method.upper()} {op.path}"] = seen
    for key, seen in totals.items():
        print(f"  {key}: {dict(seen)}")
    assert len(totals) == 24, sorted(totals)
    # every registered expert points at loopback only
    with asgi.get_client(app) as client:
        experts = client.get("/admin/experts", headers=auth, timeout=10).json()["data"]
    for expert in experts:
        assert all(e.startswith("http://127.0.0.1:") for e in expert["endpoints"]), expert
