"""OpenAI's batch file format in and out: one JSON request per line, one result per line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from coe.errors import InvalidRequest, PayloadTooLarge
from coe.pipeline import Answer
from coe.protocol import ChatCompletionRequest, validation_message
from coe.routing.decision import RouteDecision

CHAT_URL = "/v1/chat/completions"


@dataclass(frozen=True)
class ParsedLine:
    index: int
    custom_id: str
    body: dict[str, Any] | None  # None: the line is bad, see `error`
    error: str | None = None


def _parse_line(index: int, raw: str, seen: set[str]) -> ParsedLine:
    fallback_id = f"line-{index + 1}"
    try:
        data = json.loads(raw)
    except ValueError as err:
        return ParsedLine(index, fallback_id, None, f"line {index + 1} is not valid JSON: {err}")
    if not isinstance(data, dict):
        return ParsedLine(index, fallback_id, None, f"line {index + 1} is not a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return ParsedLine(index, fallback_id, None, f"line {index + 1} has no custom_id string")
    if custom_id in seen:
        return ParsedLine(index, custom_id, None, f"duplicate custom_id {custom_id!r}")
    seen.add(custom_id)
    url = data.get("url", CHAT_URL)
    if url != CHAT_URL:
        return ParsedLine(index, custom_id, None, f"unsupported url {url!r}; use {CHAT_URL}")
    if data.get("method", "POST") != "POST":
        return ParsedLine(index, custom_id, None, "method must be POST")
    body = data.get("body")
    if not isinstance(body, dict):
        return ParsedLine(index, custom_id, None, "missing body object")
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as err:
        message, _ = validation_message(list(err.errors()))
        return ParsedLine(index, custom_id, None, message)
    if request.stream:
        return ParsedLine(index, custom_id, None, "stream is not supported in batch requests")
    return ParsedLine(index, custom_id, request.upstream_body())


def parse_batch_file(content: bytes, max_bytes: int, max_lines: int) -> list[ParsedLine]:
    """Every non-empty line becomes a ParsedLine; bad lines carry their error, none are dropped."""
    if len(content) > max_bytes:
        raise PayloadTooLarge(
            f"batch file of {len(content)} bytes exceeds the {max_bytes}-byte limit"
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidRequest(f"batch file is not UTF-8: {err}") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InvalidRequest("batch file has no requests")
    if len(lines) > max_lines:
        raise PayloadTooLarge(f"batch file has {len(lines)} lines; the limit is {max_lines}")
    seen: set[str] = set()
    return [_parse_line(i, raw, seen) for i, raw in enumerate(lines)]


def answer_body(decision: RouteDecision, answer: Answer, worker: str) -> dict[str, Any]:
    """A batch result's response body: the answer, named by its expert, with `coe` metadata
    like the chat endpoint's (and the worker that wrote it)."""
    body = dict(answer.body)
    meta: dict[str, Any] = {
        "router": decision.router,
        "reason": decision.reason,
        "category": decision.category,
        "decision": decision.to_dict(),
        "upstream_model": body.get("model"),
        "worker": worker,
        "expert": answer.expert,
        "experts": answer.experts,
        "failures": [vars(f) for f in answer.failures],
    }
    if answer.fanout is not None:
        meta.update(answer.fanout)
    body["coe"] = meta
    body["model"] = answer.expert
    return body


def result_line(
    job_id: str,
    index: int,
    custom_id: str,
    *,
    body: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
    status_code: int = 200,
) -> dict[str, Any]:
    return {
        "id": f"{job_id}-req-{index}",
        "custom_id": custom_id,
        "response": None if body is None else {"status_code": status_code, "body": body},
        "error": None if error is None else {"code": error[0], "message": error[1]},
    }
