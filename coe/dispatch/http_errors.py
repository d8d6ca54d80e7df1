"""httpx failures onto the error tree, written once for every outbound call we make.

Expert calls, pool controllers and the vLLM launcher all talk HTTP; they share these two
mappings so a timeout is always an UpstreamTimeout and a refusal always names its status.
"""

from __future__ import annotations

import json

import httpx

from coe.errors import ExpertUnavailable, UpstreamError, UpstreamStatus, UpstreamTimeout


def transport_error(
    err: httpx.HTTPError,
    what: str,
    *,
    expert: str | None = None,
    url: str | None = None,
    kind: type[UpstreamError] = UpstreamError,
) -> UpstreamError:
    """A request that got no answer. Timeouts stay timeouts unless `kind` says otherwise."""
    detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    if isinstance(err, httpx.TimeoutException) and kind is UpstreamError:
        return UpstreamTimeout(f"{what} timed out ({detail})", expert=expert, url=url)
    return kind(f"{what} failed: {detail}", expert=expert, url=url)


def status_error(
    status: int,
    text: str,
    what: str,
    *,
    expert: str | None = None,
    url: str | None = None,
    kind: type[UpstreamError] | None = None,
) -> UpstreamError:
    """A request answered with an error status: an UpstreamStatus keeping the body (whose
    status decides retries and the client's status), or `kind` when the caller knows better."""
    if kind is None and status == 503 and _error_type(text) == "expert_unavailable":
        kind = ExpertUnavailable  # a pool service could not swap the expert in: fall back
    if kind is not None:
        return kind(f"{what} answered {status}: {text[:300]}", expert=expert, url=url)
    return UpstreamStatus(
        f"{what} answered {status}: {text[:300]}",
        status=status,
        body=text,
        expert=expert,
        url=url,
    )


def _error_type(text: str) -> str | None:
    """The `error.type` of an OpenAI-shaped error body, if that is what `text` is."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None
