"""A request's needs, read from the chat body once: tools, image parts, structured output and
the prompt-size estimate (characters / 4, rounded up)."""

from __future__ import annotations

from typing import Any

import pytest

from coe.routing import RequestNeeds, needs_of


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "coe/auto", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_a_plain_body_needs_nothing_but_its_tokens() -> None:
    assert needs_of(body()) == RequestNeeds(tokens=1)  # "hi": 2 characters, 1 token
    assert needs_of({}) == RequestNeeds()


TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}


@pytest.mark.parametrize(
    ("extra", "tools"),
    [
        ({"tools": [TOOL]}, True),
        ({"tools": [TOOL], "tool_choice": "none"}, True),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, True),
        ({"tool_choice": "required"}, True),
        ({"functions": [{"name": "f"}]}, True),  # the legacy spelling
        ({"tools": []}, False),
        ({"tool_choice": "none"}, False),
        ({}, False),
    ],
)
def test_tools(extra: dict[str, Any], tools: bool) -> None:
    assert needs_of(body(**extra)).tools is tools


@pytest.mark.parametrize("kind", ["image_url", "input_image"])
def test_image_parts_in_any_message(kind: str) -> None:
    messages = [
        {"role": "user", "content": [{"type": kind, kind: {"url": "data:image/png;base64,AA"}}]},
        {"role": "assistant", "content": "seen"},
        {"role": "user", "content": "and now?"},
    ]
    needs = needs_of({"messages": messages})
    assert needs.image_input is True
    assert needs.tokens == 3  # "seen" + "and now?" = 12 characters; images are not counted
    text_only = [{"role": "user", "content": [{"type": "text", "text": "an image_url"}]}]
    assert needs_of({"messages": text_only}).image_input is False


def test_structured_output_says_which_and_the_schema_name() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {}}}
    needs = needs_of(body(response_format=schema))
    assert (needs.json_schema, needs.schema_name) == ("json_schema", "answer")
    unnamed = needs_of(body(response_format={"type": "json_schema", "json_schema": {}}))
    assert (unnamed.json_schema, unnamed.schema_name) == ("json_schema", None)
    loose = needs_of(body(response_format={"type": "json_object"}))
    assert (loose.json_schema, loose.schema_name) == ("json_object", None)
    assert needs_of(body(response_format={"type": "text"})).json_schema is None
    assert needs_of(body(response_format="json")).json_schema is None


def test_the_token_estimate_counts_every_message_text_over_four() -> None:
    messages: list[Any] = [
        {"role": "system", "content": "x" * 10},
        {"role": "user", "content": [{"type": "text", "text": "y" * 7}, {"type": "text"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}],  # 8 chars
        },
        {"role": "tool", "content": "z" * 4},
        "not a message",
    ]
    assert needs_of({"messages": messages}).tokens == 8  # ceil(29 / 4)
    assert needs_of({"messages": [{"role": "user", "content": "abcd"}]}).tokens == 1
    assert needs_of({"messages": [{"role": "user", "content": "abcde"}]}).tokens == 2
    assert needs_of({"messages": "nonsense"}).tokens == 0
