"""Every malformed body the gateway can be sent, and the exact error each gets: status,
type, param and message, pinned from the hand-parsed bodies so typed bodies answer alike."""

# ruff: noqa: E501  (the pinned messages are long, and kept whole)

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from coe.config import Settings
from coe.experts.schema import CoeConfig
from tests.support.asgi import HostRouter, gateway_client

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "experts": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:9"]}],
    "default_expert": "a",
    "pipelines": {"auto": {"routers": ["default"]}},
    "routers_dirs": [str(REPO / "routers")],
}
ADMIN = "malformed-admin-token-0123456789"
JSON = {"content-type": "application/json"}
HI = [{"role": "user", "content": "hi"}]


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "a", "messages": HI, **fields}


# (id, method, path, raw body, headers): raw bytes are sent as they are
CASES: list[tuple[str, str, str, bytes, dict[str, str]]] = [
    ("chat-empty", "POST", "/v1/chat/completions", b"", JSON),
    ("chat-not-json", "POST", "/v1/chat/completions", b"{not json", JSON),
    ("chat-not-utf8", "POST", "/v1/chat/completions", b"\xff\xfe{}", JSON),
    ("chat-array", "POST", "/v1/chat/completions", b"[1, 2]", JSON),
    ("chat-string", "POST", "/v1/chat/completions", b'"hi"', JSON),
    ("chat-null", "POST", "/v1/chat/completions", b"null", JSON),
    ("chat-no-model", "POST", "/v1/chat/completions", json.dumps({"messages": HI}).encode(), JSON),
    ("chat-no-messages", "POST", "/v1/chat/completions", b'{"model": "a"}', JSON),
    (
        "chat-empty-messages",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages=[])).encode(),
        JSON,
    ),
    (
        "chat-messages-not-list",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages="hi")).encode(),
        JSON,
    ),
    (
        "chat-bad-role",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages=[{"role": "wizard", "content": "hi"}])).encode(),
        JSON,
    ),
    (
        "chat-no-role",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages=[{"content": "hi"}])).encode(),
        JSON,
    ),
    (
        "chat-message-not-object",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages=["hi"])).encode(),
        JSON,
    ),
    (
        "chat-bad-content",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages=[{"role": "user", "content": 5}])).encode(),
        JSON,
    ),
    (
        "chat-bad-content-part",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages=[{"role": "user", "content": ["text"]}])).encode(),
        JSON,
    ),
    (
        "chat-model-number",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(model=5)).encode(),
        JSON,
    ),
    (
        "chat-model-empty",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(model="")).encode(),
        JSON,
    ),
    (
        "chat-model-long",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(model="m" * 300)).encode(),
        JSON,
    ),
    (
        "chat-stream-string",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(stream=[1])).encode(),
        JSON,
    ),
    (
        "chat-temperature-high",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(temperature=3)).encode(),
        JSON,
    ),
    (
        "chat-temperature-string",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(temperature="hot")).encode(),
        JSON,
    ),
    (
        "chat-max-tokens-zero",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(max_tokens=0)).encode(),
        JSON,
    ),
    (
        "chat-max-tokens-over",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(max_tokens=10**9)).encode(),
        JSON,
    ),
    (
        "chat-max-completion-over",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(max_completion_tokens=10**9)).encode(),
        JSON,
    ),
    ("chat-n-high", "POST", "/v1/chat/completions", json.dumps(_chat(n=99)).encode(), JSON),
    ("chat-stop-number", "POST", "/v1/chat/completions", json.dumps(_chat(stop=5)).encode(), JSON),
    (
        "chat-stream-options-list",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(stream_options=[1])).encode(),
        JSON,
    ),
    (
        "chat-many-problems",
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": 1, "messages": [], "n": 0, "top_p": 9, "seed": "x"}).encode(),
        JSON,
    ),
    (
        "chat-too-many-messages",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(messages=HI * 6)).encode(),
        JSON,
    ),
    (
        "chat-coe-not-object",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(coe=5)).encode(),
        JSON,
    ),
    (
        "chat-coe-k-zero",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(coe={"k": 0})).encode(),
        JSON,
    ),
    (
        "chat-coe-k-string",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(coe={"k": "2"})).encode(),
        JSON,
    ),
    (
        "chat-coe-unknown",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(coe={"wat": 1})).encode(),
        JSON,
    ),
    (
        "chat-coe-allow-empty",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(coe={"allow": []})).encode(),
        JSON,
    ),
    (
        "chat-coe-max-cost-negative",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(coe={"max_cost": -1})).encode(),
        JSON,
    ),
    (
        "chat-oversize",
        "POST",
        "/v1/chat/completions",
        json.dumps(_chat(pad="x" * 5000)).encode(),
        JSON,
    ),
    (
        "chat-form-encoded",
        "POST",
        "/v1/chat/completions",
        b"model=a",
        {"content-type": "application/x-www-form-urlencoded"},
    ),
    ("route-empty", "POST", "/v1/route", b"", JSON),
    ("route-not-json", "POST", "/v1/route", b"{", JSON),
    ("route-array", "POST", "/v1/route", b"[]", JSON),
    ("route-neither", "POST", "/v1/route", b"{}", JSON),
    ("route-unknown-field", "POST", "/v1/route", b'{"query": "x", "extra": 1}', JSON),
    ("route-query-empty", "POST", "/v1/route", b'{"query": ""}', JSON),
    ("route-query-number", "POST", "/v1/route", b'{"query": 5}', JSON),
    ("route-messages-empty", "POST", "/v1/route", b'{"messages": []}', JSON),
    (
        "route-bad-role",
        "POST",
        "/v1/route",
        b'{"messages": [{"role": "wizard", "content": "x"}]}',
        JSON,
    ),
    ("route-coe-k-zero", "POST", "/v1/route", b'{"query": "x", "coe": {"k": 0}}', JSON),
    ("route-oversize", "POST", "/v1/route", json.dumps({"query": "x" * 5000}).encode(), JSON),
    ("batch-empty-json", "POST", "/v1/batches", b"", JSON),
    ("batch-not-json", "POST", "/v1/batches", b"{", JSON),
    ("batch-array", "POST", "/v1/batches", b"[]", JSON),
    ("batch-missing-fields", "POST", "/v1/batches", b"{}", JSON),
    (
        "batch-file-id-number",
        "POST",
        "/v1/batches",
        b'{"input_file_id": 5, "endpoint": "/v1/chat/completions", "completion_window": "24h"}',
        JSON,
    ),
    (
        "batch-metadata-list",
        "POST",
        "/v1/batches",
        b'{"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h",'
        b' "metadata": [1]}',
        JSON,
    ),
    (
        "batch-unknown-file",
        "POST",
        "/v1/batches",
        b'{"input_file_id": "file-nope", "endpoint": "/v1/chat/completions",'
        b' "completion_window": "24h"}',
        JSON,
    ),
    ("batch-alias-empty", "POST", "/v1/batches", b"", {"content-type": "application/jsonl"}),
    (
        "batch-alias-not-jsonl",
        "POST",
        "/v1/batches",
        b"hello\nworld\n",
        {"content-type": "application/jsonl"},
    ),
    ("files-not-multipart", "POST", "/v1/files", b"{}", JSON),
    ("admin-create-not-json", "POST", "/admin/experts", b"{", JSON),
    ("admin-create-array", "POST", "/admin/experts", b"[]", JSON),
    ("admin-create-empty", "POST", "/admin/experts", b"", JSON),
    ("admin-create-missing", "POST", "/admin/experts", b'{"name": "b"}', JSON),
    (
        "admin-create-bad-name",
        "POST",
        "/admin/experts",
        b'{"name": "B B", "model": "m", "endpoints": ["http://x.test"]}',
        JSON,
    ),
    (
        "admin-create-bad-url",
        "POST",
        "/admin/experts",
        b'{"name": "b", "model": "m", "endpoints": ["not a url"]}',
        JSON,
    ),
    (
        "admin-create-cost-bool",
        "POST",
        "/admin/experts",
        b'{"name": "b", "model": "m", "endpoints": ["http://x.test"], "cost": true}',
        JSON,
    ),
    (
        "admin-create-unknown",
        "POST",
        "/admin/experts",
        b'{"name": "b", "model": "m", "endpoints": ["http://x.test"], "wat": 1}',
        JSON,
    ),
    ("admin-update-not-json", "PATCH", "/admin/experts/a", b"{", JSON),
    ("admin-update-bad-cost", "PATCH", "/admin/experts/a", b'{"cost": -1}', JSON),
    ("admin-update-unknown", "PATCH", "/admin/experts/a", b'{"name": "z"}', JSON),
    ("admin-key-missing", "POST", "/admin/keys", b"{}", JSON),
    ("admin-key-not-json", "POST", "/admin/keys", b"{", JSON),
    ("admin-key-bad-rpm", "POST", "/admin/keys", b'{"name": "k", "rate_limit_rpm": "x"}', JSON),
    ("admin-reload-not-json", "POST", "/admin/reload", b"{", JSON),
    ("admin-reload-bad", "POST", "/admin/reload", b'{"reseed_experts": "x"}', JSON),
]

# status, type, param, message: as the hand-parsed bodies answered them
EXPECTED: dict[str, tuple[int, str, str | None, str]] = {
    "chat-empty": (400, "invalid_request_error", None, "Request body is empty; send a JSON object"),
    "chat-not-json": (
        400,
        "invalid_request_error",
        None,
        "Request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ),
    "chat-not-utf8": (
        400,
        "invalid_request_error",
        None,
        "Request body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    ),
    "chat-array": (
        400,
        "invalid_request_error",
        None,
        "Request body must be a JSON object, not list",
    ),
    "chat-string": (
        400,
        "invalid_request_error",
        None,
        "Request body must be a JSON object, not str",
    ),
    "chat-null": (
        400,
        "invalid_request_error",
        None,
        "Request body must be a JSON object, not NoneType",
    ),
    "chat-no-model": (
        400,
        "invalid_request_error",
        "model",
        "Invalid request: model: Field required",
    ),
    "chat-no-messages": (
        400,
        "invalid_request_error",
        "messages",
        "Invalid request: messages: Field required",
    ),
    "chat-empty-messages": (
        400,
        "invalid_request_error",
        "messages",
        "Invalid request: messages: List should have at least 1 item after validation, not 0",
    ),
    "chat-messages-not-list": (
        400,
        "invalid_request_error",
        "messages",
        "Invalid request: messages: Input should be a valid list",
    ),
    "chat-bad-role": (
        400,
        "invalid_request_error",
        "messages.0.role",
        "Invalid request: messages.0.role: Input should be 'system', 'developer', 'user', 'assistant', 'tool' or 'function'",
    ),
    "chat-no-role": (
        400,
        "invalid_request_error",
        "messages.0.role",
        "Invalid request: messages.0.role: Field required",
    ),
    "chat-message-not-object": (
        400,
        "invalid_request_error",
        "messages.0",
        "Invalid request: messages.0: Input should be a valid dictionary or instance of ChatMessage",
    ),
    "chat-bad-content": (
        400,
        "invalid_request_error",
        "messages.0.content.str",
        "Invalid request: messages.0.content.str: Input should be a valid string; messages.0.content.list[dict[str,any]]: Input should be a valid list",
    ),
    "chat-bad-content-part": (
        400,
        "invalid_request_error",
        "messages.0.content.str",
        "Invalid request: messages.0.content.str: Input should be a valid string; messages.0.content.list[dict[str,any]].0: Input should be a valid dictionary",
    ),
    "chat-model-number": (
        400,
        "invalid_request_error",
        "model",
        "Invalid request: model: Input should be a valid string",
    ),
    "chat-model-empty": (
        400,
        "invalid_request_error",
        "model",
        "Invalid request: model: String should have at least 1 character",
    ),
    "chat-model-long": (
        400,
        "invalid_request_error",
        "model",
        "Invalid request: model: String should have at most 256 characters",
    ),
    "chat-stream-string": (
        400,
        "invalid_request_error",
        "stream",
        "Invalid request: stream: Input should be a valid boolean",
    ),
    "chat-temperature-high": (
        400,
        "invalid_request_error",
        "temperature",
        "Invalid request: temperature: Input should be less than or equal to 2",
    ),
    "chat-temperature-string": (
        400,
        "invalid_request_error",
        "temperature",
        "Invalid request: temperature: Input should be a valid number, unable to parse string as a number",
    ),
    "chat-max-tokens-zero": (
        400,
        "invalid_request_error",
        "max_tokens",
        "Invalid request: max_tokens: Input should be greater than or equal to 1",
    ),
    "chat-max-tokens-over": (
        400,
        "invalid_request_error",
        "max_tokens",
        "max_tokens is 1000000000; the limit is 32768",
    ),
    "chat-max-completion-over": (
        400,
        "invalid_request_error",
        "max_completion_tokens",
        "max_completion_tokens is 1000000000; the limit is 32768",
    ),
    "chat-n-high": (
        400,
        "invalid_request_error",
        "n",
        "Invalid request: n: Input should be less than or equal to 16",
    ),
    "chat-stop-number": (
        400,
        "invalid_request_error",
        "stop.str",
        "Invalid request: stop.str: Input should be a valid string; stop.list[str]: Input should be a valid list",
    ),
    "chat-stream-options-list": (
        400,
        "invalid_request_error",
        "stream_options",
        "Invalid request: stream_options: Input should be a valid dictionary",
    ),
    "chat-many-problems": (
        400,
        "invalid_request_error",
        "model",
        "Invalid request: model: Input should be a valid string; messages: List should have at least 1 item after validation, not 0; top_p: Input should be less than or equal to 1 (and 2 more)",
    ),
    "chat-too-many-messages": (
        400,
        "invalid_request_error",
        "messages",
        "messages has 6 entries; the limit is 5",
    ),
    "chat-coe-not-object": (
        400,
        "invalid_request_error",
        "coe",
        "Invalid request: coe: Input should be a valid dictionary or instance of RoutingPolicy",
    ),
    "chat-coe-k-zero": (
        400,
        "invalid_request_error",
        "coe.k",
        "Invalid request: coe.k: Input should be greater than or equal to 1",
    ),
    "chat-coe-k-string": (
        400,
        "invalid_request_error",
        "coe.k",
        "Invalid request: coe.k: Input should be a valid integer",
    ),
    "chat-coe-unknown": (
        400,
        "invalid_request_error",
        "coe.wat",
        "Invalid request: coe.wat: Extra inputs are not permitted",
    ),
    "chat-coe-allow-empty": (
        400,
        "invalid_request_error",
        "coe.allow",
        "Invalid request: coe.allow: List should have at least 1 item after validation, not 0",
    ),
    "chat-coe-max-cost-negative": (
        400,
        "invalid_request_error",
        "coe.max_cost",
        "Invalid request: coe.max_cost: Input should be greater than or equal to 0",
    ),
    "chat-oversize": (
        413,
        "invalid_request_error",
        None,
        "Request body of 5074 bytes exceeds the 4096-byte limit",
    ),
    "chat-form-encoded": (
        400,
        "invalid_request_error",
        None,
        "Request body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    ),
    "route-empty": (
        400,
        "invalid_request_error",
        None,
        "Request body is empty; send a JSON object",
    ),
    "route-not-json": (
        400,
        "invalid_request_error",
        None,
        "Request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ),
    "route-array": (
        400,
        "invalid_request_error",
        None,
        "Request body must be a JSON object, not list",
    ),
    "route-neither": (400, "invalid_request_error", "query", "Give either `query` or `messages`"),
    "route-unknown-field": (
        400,
        "invalid_request_error",
        "extra",
        "Invalid request: extra: Extra inputs are not permitted",
    ),
    "route-query-empty": (
        400,
        "invalid_request_error",
        "query",
        "Invalid request: query: String should have at least 1 character",
    ),
    "route-query-number": (
        400,
        "invalid_request_error",
        "query",
        "Invalid request: query: Input should be a valid string",
    ),
    "route-messages-empty": (
        400,
        "invalid_request_error",
        "messages",
        "Invalid request: messages: List should have at least 1 item after validation, not 0",
    ),
    "route-bad-role": (
        400,
        "invalid_request_error",
        "messages.0.role",
        "Invalid request: messages.0.role: Input should be 'system', 'developer', 'user', 'assistant', 'tool' or 'function'",
    ),
    "route-coe-k-zero": (
        400,
        "invalid_request_error",
        "coe.k",
        "Invalid request: coe.k: Input should be greater than or equal to 1",
    ),
    "route-oversize": (
        413,
        "invalid_request_error",
        None,
        "Request body of 5013 bytes exceeds the 4096-byte limit",
    ),
    "batch-empty-json": (
        400,
        "invalid_request_error",
        None,
        "Request body is empty; send a JSON object",
    ),
    "batch-not-json": (
        400,
        "invalid_request_error",
        None,
        "Request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ),
    "batch-array": (
        400,
        "invalid_request_error",
        None,
        "Request body must be a JSON object, not list",
    ),
    "batch-missing-fields": (
        400,
        "invalid_request_error",
        "input_file_id",
        "Invalid request: input_file_id: Field required; endpoint: Field required; completion_window: Field required",
    ),
    "batch-file-id-number": (
        400,
        "invalid_request_error",
        "input_file_id",
        "Invalid request: input_file_id: Input should be a valid string",
    ),
    "batch-metadata-list": (
        400,
        "invalid_request_error",
        "metadata",
        "Invalid request: metadata: Input should be a valid dictionary",
    ),
    "batch-unknown-file": (404, "not_found_error", "file_id", "no file 'file-nope'"),
    "batch-alias-empty": (400, "invalid_request_error", None, "batch file has no requests"),
    "batch-alias-not-jsonl": (
        400,
        "invalid_request_error",
        None,
        "line 1 is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    ),
    "files-not-multipart": (
        400,
        "invalid_request_error",
        None,
        "upload a file as multipart/form-data with a `file` field",
    ),
    "admin-create-not-json": (
        400,
        "invalid_request_error",
        "1",
        "Invalid request: 1: JSON decode error",
    ),
    "admin-create-array": (
        400,
        "invalid_request_error",
        "body",
        "Invalid request: body: Input should be a valid dictionary or object to extract fields from",
    ),
    "admin-create-empty": (
        400,
        "invalid_request_error",
        "body",
        "Invalid request: body: Field required",
    ),
    "admin-create-missing": (
        400,
        "invalid_request_error",
        "model",
        "Invalid request: model: Field required; endpoints: Field required",
    ),
    "admin-create-bad-name": (
        400,
        "invalid_request_error",
        "name",
        "Invalid request: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}$'",
    ),
    "admin-create-bad-url": (
        400,
        "invalid_request_error",
        "endpoints.0",
        "Invalid request: endpoints.0: Input should be a valid URL, relative URL without a base",
    ),
    "admin-create-cost-bool": (
        400,
        "invalid_request_error",
        "cost",
        "Invalid request: cost: Input should be a valid number",
    ),
    "admin-create-unknown": (
        400,
        "invalid_request_error",
        "wat",
        "Invalid request: wat: Extra inputs are not permitted",
    ),
    "admin-update-not-json": (
        400,
        "invalid_request_error",
        "1",
        "Invalid request: 1: JSON decode error",
    ),
    "admin-update-bad-cost": (
        400,
        "invalid_request_error",
        "cost",
        "Invalid request: cost: Input should be greater than or equal to 0",
    ),
    "admin-update-unknown": (
        400,
        "invalid_request_error",
        "name",
        "Invalid request: name: Extra inputs are not permitted",
    ),
    "admin-key-missing": (
        400,
        "invalid_request_error",
        "name",
        "Invalid request: name: Field required",
    ),
    "admin-key-not-json": (
        400,
        "invalid_request_error",
        "1",
        "Invalid request: 1: JSON decode error",
    ),
    "admin-key-bad-rpm": (
        400,
        "invalid_request_error",
        "rate_limit_rpm",
        "Invalid request: rate_limit_rpm: Input should be a valid integer",
    ),
    "admin-reload-not-json": (
        400,
        "invalid_request_error",
        "1",
        "Invalid request: 1: JSON decode error",
    ),
    "admin-reload-bad": (
        400,
        "invalid_request_error",
        "reseed_experts",
        "Invalid request: reseed_experts: Input should be a valid boolean",
    ),
}


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        dev_mode=True,
        admin_token=SecretStr(ADMIN),
        max_body_bytes=4096,
        batch_max_bytes=1 << 20,
        max_messages=5,
    )
    config = CoeConfig.model_validate(CONFIG)
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with gateway_client(settings, config, HostRouter(), headers=headers) as http:
        yield http


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_malformed_body(
    client: httpx.AsyncClient,
    request: pytest.FixtureRequest,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    case = request.node.callspec.id
    r = await client.request(method, path, content=body, headers=headers)
    error = r.json()["error"]
    got = (r.status_code, error["type"], error["param"], error["message"])
    assert got == EXPECTED[case], got


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route", "/admin/experts"])
async def test_oversize_body_without_length(client: httpx.AsyncClient, path: str) -> None:
    """A body sent in chunks, with no content-length to refuse it by, is cut off at the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "a", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = await client.post(path, content=chunks(), headers=JSON)
    error = r.json()["error"]
    got = (r.status_code, error["type"], error["param"], error["message"])
    assert got == (413, "invalid_request_error", None, "Request body exceeds the 4096-byte limit")


async def test_unknown_fields_are_logged_and_passed_on(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {**_chat(), "logit_bias": {"1": 2}, "zeta": True}
    with caplog.at_level(logging.INFO, logger="coe"):
        r = await client.post("/v1/chat/completions", json=body, headers={"x-request-id": "u-1"})
    assert r.status_code == 502  # the expert is unreachable: the body was accepted
    assert "request u-1: passing unrecognised fields to the expert: ['logit_bias', 'zeta']" in (
        caplog.text
    )
