"""httpx failures onto the error tree, written once for every outbound call we make.

Expert calls, pool controllers and the vLLM launcher all talk HTTP; they share these two
mappings so a timeout is always an UpstreamTimeout and a refusal always names its status.

Two audiences. A call made for a chat (`public=True`, an `expert` named) gets a message a
client may read: the expert and the kind of failure, never a URL, host or upstream body. The
machinery (pool controllers, the vLLM launcher) keeps the operator's wording. Both keep
everything in `detail` for the log, credentials redacted.
"""

from __future__ import annotations

import json
import re

import httpx

from coe.errors import (
    ExpertAuthFailed,
    ExpertUnavailable,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from coe.security.redact import redact_text, redact_url

BODY_EXCERPT = 300  # characters of an upstream body kept in `detail`


def transport_error(
    err: httpx.HTTPError,
    what: str,
    *,
    expert: str | None = None,
    url: str | None = None,
    kind: type[UpstreamError] = UpstreamError,
    public: bool = False,
) -> UpstreamError:
    """A request that got no answer. Timeouts stay timeouts unless `kind` says otherwise."""
    exc = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    detail = redact_text(f"{what}: {exc}")
    url = redact_url(url) if url else None
    timeout = isinstance(err, httpx.TimeoutException)
    if not public or expert is None or kind is not UpstreamError:
        if timeout and kind is UpstreamError:
            message = redact_text(f"{what} timed out ({exc})")
            return UpstreamTimeout(message, expert=expert, url=url, detail=detail)
        return kind(redact_text(f"{what} failed: {exc}"), expert=expert, url=url, detail=detail)
    if isinstance(err, httpx.ConnectTimeout):
        phrase, code = "timed out connecting", "upstream_timeout"
    elif timeout:
        phrase, code = "timed out before answering", "upstream_timeout"
    elif isinstance(err, httpx.ConnectError):
        phrase, code = "is unreachable (the connection failed)", "expert_unreachable"
    elif isinstance(err, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        phrase, code = "broke the connection before it finished", "upstream_connection_broken"
    else:
        phrase, code = "could not be called", "expert_unreachable"
    cls = UpstreamTimeout if timeout else UpstreamError
    return cls(f"expert {expert} {phrase}", expert=expert, url=url, detail=detail, code=code)


def status_error(
    status: int,
    text: str,
    what: str,
    *,
    expert: str | None = None,
    url: str | None = None,
    kind: type[UpstreamError] | None = None,
    public: bool = False,
) -> UpstreamError:
    """A request answered with an error status: an UpstreamStatus keeping the body (whose
    status decides retries and the client's status), or `kind` when the caller knows better."""
    excerpt = redact_text(text[:BODY_EXCERPT])
    detail = f"{redact_text(what)} answered {status}: {excerpt}"
    shown_url = redact_url(url) if url else None
    if kind is None and status == 503 and _error_type(text) == "expert_unavailable":
        kind = ExpertUnavailable  # a pool service could not swap the expert in: fall back
        if public and expert is not None:
            message = f"expert {expert} is unavailable (its pool could not load it)"
            return kind(message, expert=expert, url=shown_url, detail=detail)
    if kind is not None:
        return kind(detail, expert=expert, url=shown_url, detail=detail)
    cls = ExpertAuthFailed if status in (401, 403) else UpstreamStatus
    if not public or expert is None:
        return cls(detail, status=status, body=text, expert=expert, url=shown_url, detail=detail)
    return cls(
        _client_message(expert, status, text, url),
        status=status,
        body=text,
        expert=expert,
        url=shown_url,
        detail=detail,
        code=_status_code(status),
    )


def _status_code(status: int) -> str:
    if status in (401, 403):
        return "expert_auth_failed"
    if status == 429:
        return "upstream_rate_limited"
    return "upstream_status" if status >= 500 else "upstream_rejected_request"


def _client_message(expert: str, status: int, text: str, url: str | None) -> str:
    if status in (401, 403):
        return (
            f"expert {expert} rejected the gateway's credentials (upstream {status}); "
            "the operator must fix the expert's api_key"
        )
    if status == 429:
        return f"expert {expert} answered 429 (rate limited upstream)"
    if status >= 500:
        return f"expert {expert} answered {status} (upstream server error)"
    said = safe_upstream_message(text, url)
    because = f": {said}" if said else ""
    return f"expert {expert} rejected the request (upstream {status}){because}"


# What makes an upstream message unfit for a client: a URL, an IP literal, host:port.
_LEAKY = re.compile(
    r"://|\b\d{1,3}(?:\.\d{1,3}){3}\b|\[[0-9A-Fa-f:]+\]|\b[\w.-]+:\d{2,5}\b|localhost",
    re.IGNORECASE,
)


def safe_upstream_message(text: str, url: str | None = None) -> str | None:
    """The `error.message` of an OpenAI-shaped upstream body, when it may reach the client.

    A 4xx the client caused (context too long, a bad parameter) is only useful with the
    expert's reason; that reason is passed on only when it names no URL, IP address,
    host:port or the expert's own host, and cut to 300 characters. Otherwise: None.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message.strip():
        return None
    message = " ".join(message.split())[:BODY_EXCERPT]
    try:
        host = httpx.URL(url).host if url else ""
    except httpx.InvalidURL:
        host = ""
    if _LEAKY.search(message) or (host and host.lower() in message.lower()):
        return None
    return message


def _error_type(text: str) -> str | None:
    """The `error.type` of an OpenAI-shaped error body, if that is what `text` is."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None
