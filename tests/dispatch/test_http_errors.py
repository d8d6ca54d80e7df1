"""httpx failures and error statuses onto the error tree, as every outbound call maps them."""

from __future__ import annotations

import json

import httpx

from coe.dispatch.http_errors import status_error, transport_error
from coe.errors import ExpertUnavailable, UpstreamError, UpstreamStatus, UpstreamTimeout


def test_timeouts_stay_timeouts_and_other_failures_name_their_kind() -> None:
    err = transport_error(httpx.ReadTimeout("slow"), "expert a at http://x", expert="a")
    assert isinstance(err, UpstreamTimeout) and err.status_code == 504
    assert err.message == "expert a at http://x timed out (ReadTimeout: slow)"
    refused = transport_error(httpx.ConnectError("refused"), "expert a at http://x")
    assert (
        type(refused) is UpstreamError
        and refused.message == "expert a at http://x failed: ConnectError: refused"
    )
    forced = transport_error(httpx.ReadTimeout("slow"), "swap", kind=ExpertUnavailable)
    assert isinstance(forced, ExpertUnavailable)


def test_statuses_keep_their_body_and_decide_retries() -> None:
    server = status_error(500, "boom", "expert a")
    assert isinstance(server, UpstreamStatus) and server.retryable and server.body == "boom"
    rejected = status_error(422, "bad field", "expert a")
    assert not rejected.retryable and rejected.status_code == 400


def test_a_pool_service_that_cannot_swap_an_expert_in_means_fall_back() -> None:
    body = {"error": {"message": "pool gpu0 could not load a", "type": "expert_unavailable"}}
    err = status_error(503, json.dumps(body), "expert a at http://pool")
    assert isinstance(err, ExpertUnavailable) and err.retryable and err.status_code == 503
    plain = status_error(503, json.dumps({"error": {"type": "server_error"}}), "expert a")
    assert isinstance(plain, UpstreamStatus)
    assert isinstance(status_error(503, "<html>busy</html>", "expert a"), UpstreamStatus)
