"""What the web fronts share (coe.web), the token-strength rule (coe.security.tokens) and the
one `coe` metadata builder, in isolation."""

from __future__ import annotations

import json

import pytest

from coe.dispatch.fallback import Failure
from coe.metadata import coe_metadata
from coe.pipeline import Answer
from coe.routing import Candidate, RouteDecision
from coe.security.tokens import MIN_TOKEN_LENGTH, is_weak
from coe.web.auth import bearer_token
from coe.web.request_ids import new_request_id, request_id_for


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Bearer ", None),
        ("Basic abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_request_ids_keep_a_safe_incoming_one_and_mint_otherwise() -> None:
    assert request_id_for("trace-1.2_3") == "trace-1.2_3"
    for bad in (None, "", "has space", "x" * 129, "semi;colon"):
        minted = request_id_for(bad)
        assert minted.startswith("req-") and len(minted) == 24
    assert new_request_id() != new_request_id()


@pytest.mark.parametrize("token", ["", "changeme", " Admin ", "x" * (MIN_TOKEN_LENGTH - 1)])
def test_weak_tokens(token: str) -> None:
    assert is_weak(token)


def test_a_long_random_token_is_not_weak() -> None:
    assert not is_weak("9f2c" * 8)


def _decision(policy: dict[str, object] | None) -> RouteDecision:
    details = {"policy": policy} if policy is not None else {}
    return RouteDecision((Candidate("a", 0.9),), "r", "why", category="c", details=details)


def test_metadata_for_a_batch_line_keeps_its_keys_and_their_order() -> None:
    answer = Answer("a", response={"model": "m"}, failures=[Failure("b", "down", 502)])
    meta = coe_metadata(_decision(None), answer, "m", {"worker": "w1"})
    assert list(meta) == [
        "router", "reason", "category", "decision", "upstream_model", "worker",
        "expert", "experts", "failures",
    ]  # fmt: skip
    assert meta["experts"] == ["a"] and meta["failures"][0]["expert"] == "b"
    with_policy = coe_metadata(_decision({"k": 1}), answer, "m", {"worker": "w1"})
    assert list(with_policy)[-1] == "policy" and with_policy["policy"] == {"k": 1}
    json.dumps(meta)  # a result line is JSON


def test_fan_out_metadata_is_the_fan_outs() -> None:
    fanout = {"experts": ["a", "b"], "aggregation": "vote"}
    answer = Answer("a", response={}, fanout=fanout)
    meta = coe_metadata(_decision(None), answer, None, {})
    assert meta["experts"] == ["a", "b"] and meta["aggregation"] == "vote"
