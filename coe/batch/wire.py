"""OpenAI's batch file format in and out: one JSON request per line, one result per line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from coe.errors import InvalidRequest, PayloadTooLarge, error_body
from coe.metadata import coe_metadata
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
    is_json: bool = True  # False: the line is not a JSON object at all
    has_id: bool = False  # it names a custom_id of its own (the duplicate check's)


def parse_line(index: int, raw: str, seen: set[str]) -> ParsedLine:
    fallback_id = f"line-{index + 1}"
    try:
        data = json.loads(raw)
    except ValueError as err:
        message = f"line {index + 1} is not valid JSON: {err}"
        return ParsedLine(index, fallback_id, None, message, is_json=False)
    if not isinstance(data, dict):
        message = f"line {index + 1} is not a JSON object"
        return ParsedLine(index, fallback_id, None, message, is_json=False)
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return ParsedLine(index, fallback_id, None, f"line {index + 1} has no custom_id string")

    def bad(message: str) -> ParsedLine:
        return ParsedLine(index, custom_id, None, message, has_id=True)

    if custom_id in seen:
        return bad(f"duplicate custom_id {custom_id!r}")
    seen.add(custom_id)
    url = data.get("url", CHAT_URL)
    if url != CHAT_URL:
        return bad(f"unsupported url {url!r}; use {CHAT_URL}")
    if data.get("method", "POST") != "POST":
        return bad("method must be POST")
    body = data.get("body")
    if not isinstance(body, dict):
        return bad("missing body object")
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as err:
        return bad(validation_message(list(err.errors()))[0])
    if request.stream:
        return bad("stream is not supported in batch requests")
    return ParsedLine(index, custom_id, request.upstream_body(), has_id=True)


@dataclass(frozen=True)
class FileProblem:
    """A problem with the input file as a whole: the batch fails with it, nothing runs."""

    code: str
    message: str
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line, "param": None}


def decode_upload(content: bytes, max_bytes: int, max_lines: int) -> str:
    """An uploaded batch file as text, within the size and line limits (413 beyond them)."""
    if len(content) > max_bytes:
        raise PayloadTooLarge(
            f"batch file of {len(content)} bytes exceeds the {max_bytes}-byte limit"
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidRequest(f"batch file is not UTF-8 text: {err}") from None
    lines = count_lines(text)
    if lines > max_lines:
        raise PayloadTooLarge(f"batch file has {lines} lines; the limit is {max_lines}")
    return text


def count_lines(text: str) -> int:
    return sum(1 for ln in text.splitlines() if ln.strip())


def read_batch_file(text: str, max_lines: int) -> tuple[list[ParsedLine], list[FileProblem]]:
    """Every non-empty line as a ParsedLine (bad lines carry their error, none are dropped),
    or the file-level problems that fail the whole batch: no requests, too many, or no line
    that is a JSON object at all (not JSONL)."""
    raw_lines = [ln for ln in text.splitlines() if ln.strip()]
    if not raw_lines:
        return [], [FileProblem("empty_file", "batch file has no requests")]
    if len(raw_lines) > max_lines:
        message = f"batch file has {len(raw_lines)} lines; the limit is {max_lines}"
        return [], [FileProblem("too_many_requests", message)]
    seen: set[str] = set()
    lines = [parse_line(i, raw, seen) for i, raw in enumerate(raw_lines)]
    if not any(ln.is_json for ln in lines):
        problems = [
            FileProblem("invalid_json_line", ln.error or "", ln.index + 1) for ln in lines[:10]
        ]
        return [], problems
    return lines, []


def parse_batch_file(content: bytes, max_bytes: int, max_lines: int) -> list[ParsedLine]:
    """Every non-empty line becomes a ParsedLine; a file-level problem is a 400 (or 413)."""
    text = decode_upload(content, max_bytes, max_lines)
    lines, problems = read_batch_file(text, max_lines)
    if problems:
        raise InvalidRequest(problems[0].message)
    return lines


def answer_body(decision: RouteDecision, answer: Answer, worker: str) -> dict[str, Any]:
    """A batch result's response body: the answer, named by its expert, with `coe` metadata
    like the chat endpoint's (and the worker that wrote it)."""
    body = dict(answer.body)
    meta = coe_metadata(decision, answer, body.get("model"), {"worker": worker})
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
    status_code: int | None = None,
) -> dict[str, Any]:
    """One line of a batch's output (a body) or error file (an error), in OpenAI's shape.

    A failed line keeps `error` {code, message}; when it failed with an HTTP status
    (a bad request, an unknown model, an upstream failure) `response` also carries that
    status and an OpenAI error body, as OpenAI's error files do. Cancelled and expired lines
    have no status: `response` is null."""
    request = request_ids(job_id, index)
    response: dict[str, Any] | None = None
    if body is not None:
        response = {"status_code": status_code or 200, "request_id": request[1], "body": body}
    elif error is not None and status_code is not None and status_code >= 400:
        type_ = "invalid_request_error" if status_code < 500 else "server_error"
        response = {
            "status_code": status_code,
            "request_id": request[1],
            "body": error_body(error[1], type_, code=error[0]),
        }
    return {
        "id": request[0],
        "custom_id": custom_id,
        "response": response,
        "error": None if error is None else {"code": error[0], "message": error[1]},
    }


def request_ids(job_id: str, index: int) -> tuple[str, str]:
    """A line's `id` and `request_id`: stable, so a line answered again reads the same."""
    tag = job_id.removeprefix("batch_")
    return f"batch_req_{tag}_{index}", f"req_{tag}_{index}"


def line_index(line_id: str) -> int:
    """The input line a result line answers (its `id` ends with the index)."""
    return int(line_id.rsplit("_", 1)[1])
