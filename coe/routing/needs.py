"""What a chat request needs of the expert that answers it (tools, images, structured output,
a prompt size), read once from the body so routers and constraints do not re-parse it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

JsonKind = Literal["json_schema", "json_object"]
IMAGE_PARTS = frozenset({"image_url", "input_image"})
CHARS_PER_TOKEN = 4  # the token estimate: characters / 4, rounded up


@dataclass(frozen=True)
class RequestNeeds:
    """What the request asks of an expert.

    `tools`: it carries tools (or legacy functions) or a tool_choice other than "none".
    `image_input`: a message has an `image_url` or `input_image` content part.
    `json_schema`: the `response_format` type when it asks for structured output
    ("json_schema" or "json_object"), else None; `schema_name` is the json_schema's name.
    `tokens`: an ESTIMATE of the prompt's size, characters / 4 (rounded up) over the text of
    every message (string contents, text parts, tool-call arguments); cheap and
    deterministic, not a tokenizer count, good for context-length checks with a margin.
    """

    tools: bool = False
    image_input: bool = False
    json_schema: JsonKind | None = None
    schema_name: str | None = None
    tokens: int = 0


def needs_of(body: Mapping[str, Any]) -> RequestNeeds:
    """The needs of a chat request body (as the engine receives it; malformed parts are
    ignored here, the body's validation reports them)."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    kind, name = _response_format(body.get("response_format"))
    chars = sum(_text_chars(m) for m in messages if isinstance(m, Mapping))
    return RequestNeeds(
        tools=_carries_tools(body),
        image_input=any(_has_image(m) for m in messages if isinstance(m, Mapping)),
        json_schema=kind,
        schema_name=name,
        tokens=math.ceil(chars / CHARS_PER_TOKEN),
    )


def _carries_tools(body: Mapping[str, Any]) -> bool:
    if body.get("tools") or body.get("functions"):
        return True
    choice = body.get("tool_choice", body.get("function_call"))
    return choice is not None and choice != "none"


def _response_format(fmt: Any) -> tuple[JsonKind | None, str | None]:
    if not isinstance(fmt, Mapping):
        return None, None
    kind = fmt.get("type")
    if kind == "json_object":
        return "json_object", None
    if kind != "json_schema":
        return None, None
    schema = fmt.get("json_schema")
    name = schema.get("name") if isinstance(schema, Mapping) else None
    return "json_schema", name if isinstance(name, str) and name else None


def _parts(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = message.get("content")
    return [p for p in content if isinstance(p, Mapping)] if isinstance(content, list) else []


def _has_image(message: Mapping[str, Any]) -> bool:
    return any(p.get("type") in IMAGE_PARTS for p in _parts(message))


def _text_chars(message: Mapping[str, Any]) -> int:
    content = message.get("content")
    n = len(content) if isinstance(content, str) else 0
    n += sum(len(t) for p in _parts(message) if isinstance(t := p.get("text"), str))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        args = function.get("arguments") if isinstance(function, Mapping) else None
        n += len(args) if isinstance(args, str) else 0
    return n
