"""httpx failures and error statuses onto the error tree, as every outbound call maps them.

A chat call's error names the expert and the kind of failure only; the URL, the exception
text and the upstream body are kept in `detail` for the log, credentials masked.
"""

from __future__ import annotations

import json

import httpx
import pytest

from coe.dispatch.http_errors import safe_upstream_message, status_error, transport_error
from coe.errors import (
    ExpertAuthFailed,
    ExpertUnavailable,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)

URL = "http://user:S3CRETPW@10.1.2.3:8101"
WHAT = f"expert a at {URL}"


def assert_client_safe(err: UpstreamError, *leaks: str) -> None:
    for leak in ("S3CRETPW", "10.1.2.3", "8101", "http://", *leaks):
        assert leak not in err.message, (leak, err.message)
    assert "S3CRETPW" not in err.detail and "S3CRETPW" not in (err.url or "")


def test_timeouts_stay_timeouts_and_other_failures_name_their_kind() -> None:
    err = transport_error(httpx.ReadTimeout("slow"), WHAT, expert="a", url=URL, public=True)
    assert isinstance(err, UpstreamTimeout) and err.status_code == 504
    assert err.message == "expert a timed out before answering"
    assert err.code == "upstream_timeout"
    assert err.detail == "expert a at http://user:***@10.1.2.3:8101: ReadTimeout: slow"
    assert_client_safe(err, "slow")
    refused = transport_error(
        httpx.ConnectError("refused at 10.1.2.3:8101"), WHAT, expert="a", public=True
    )
    assert type(refused) is UpstreamError and refused.code == "expert_unreachable"
    assert refused.message == "expert a is unreachable (the connection failed)"
    assert_client_safe(refused, "refused")
    assert "refused at 10.1.2.3:8101" in refused.detail
    broken = transport_error(
        httpx.RemoteProtocolError("peer closed"), WHAT, expert="a", public=True
    )
    assert broken.message == "expert a broke the connection before it finished"
    forced = transport_error(httpx.ReadTimeout("slow"), "swap", kind=ExpertUnavailable)
    assert isinstance(forced, ExpertUnavailable)


def test_machinery_calls_keep_the_operators_wording_without_credentials() -> None:
    err = transport_error(httpx.ConnectError("refused"), f"GET {URL}/health")
    assert err.message == "GET http://user:***@10.1.2.3:8101/health failed: ConnectError: refused"
    status = status_error(500, "boom", f"POST {URL}/sleep", kind=ExpertUnavailable)
    assert status.message == "POST http://user:***@10.1.2.3:8101/sleep answered 500: boom"
    probe = transport_error(httpx.ConnectError("no"), f"expert x: GET {URL}/info", expert="x")
    assert (
        probe.message == "expert x: GET http://user:***@10.1.2.3:8101/info failed: ConnectError: no"
    )
    assert probe.expert == "x"


def test_statuses_keep_their_body_for_the_log_and_decide_retries() -> None:
    server = status_error(500, "boom MARKER", WHAT, expert="a", url=URL, public=True)
    assert isinstance(server, UpstreamStatus) and server.retryable and server.body == "boom MARKER"
    assert server.message == "expert a answered 500 (upstream server error)"
    assert_client_safe(server, "MARKER")
    assert "boom MARKER" in server.detail
    rejected = status_error(422, "bad field", WHAT, expert="a", url=URL, public=True)
    assert not rejected.retryable and rejected.status_code == 400
    assert rejected.message == "expert a rejected the request (upstream 422)"


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_credentials_are_the_gateways_fault_not_the_clients(status: int) -> None:
    err = status_error(
        status, '{"error": {"message": "bad key sk-1"}}', WHAT, expert="a", url=URL, public=True
    )
    assert isinstance(err, ExpertAuthFailed)
    assert err.status_code == 502 and err.error_type == "upstream_error"
    assert err.code == "expert_auth_failed" and err.to_openai()["error"]["code"] == err.code
    assert "rejected the gateway's credentials" in err.message and "sk-1" not in err.message
    # another expert may answer; another replica holds the same key
    assert err.retryable and not err.replica_retryable


def test_the_clients_own_mistake_passes_the_experts_reason_when_it_is_clean() -> None:
    clean = json.dumps({"error": {"message": "This model's maximum context length is 2048"}})
    err = status_error(400, clean, WHAT, expert="a", url=URL, public=True)
    assert err.status_code == 400
    assert err.message == (
        "expert a rejected the request (upstream 400): This model's maximum context length is 2048"
    )
    leaky = [
        "see http://internal.example/docs",
        "model served at 10.9.9.9 is busy",
        "backend gpu-7.corp:8000 refused",
        "[::1] said no",
        "localhost rejected it",
    ]
    for text in leaky:
        body = json.dumps({"error": {"message": text}})
        assert safe_upstream_message(body, URL) is None, text
        assert status_error(400, body, WHAT, expert="a", url=URL, public=True).message == (
            "expert a rejected the request (upstream 400)"
        )
    own_host = json.dumps({"error": {"message": "vllm-a.internal rejects long prompts"}})
    assert safe_upstream_message(own_host, "http://vllm-a.internal:8000") is None
    assert safe_upstream_message("<html>not json</html>") is None
    assert safe_upstream_message(json.dumps({"error": {"message": "x" * 900}})) == "x" * 300


def test_a_pool_service_that_cannot_swap_an_expert_in_means_fall_back() -> None:
    body = {"error": {"message": "pool gpu0 could not load a", "type": "expert_unavailable"}}
    err = status_error(503, json.dumps(body), WHAT, expert="a", url=URL, public=True)
    assert isinstance(err, ExpertUnavailable) and err.retryable and err.status_code == 503
    assert err.message == "expert a is unavailable (its pool could not load it)"
    assert "could not load a" in err.detail
    plain = status_error(503, json.dumps({"error": {"type": "server_error"}}), "expert a")
    assert isinstance(plain, UpstreamStatus)
    assert isinstance(status_error(503, "<html>busy</html>", "expert a"), UpstreamStatus)
