"""httpx failures onto the error tree, written once for every outbound call we make.

Expert calls, pool controllers and the vLLM launcher all talk HTTP; they share these two
mappings so a timeout is always an UpstreamTimeout and a refusal always names its status.
"""

from __future__ import annotations

import httpx

from coe.errors import UpstreamError, UpstreamStatus, UpstreamTimeout


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
    if kind is not None:
        return kind(f"{what} answered {status}: {text[:300]}", expert=expert, url=url)
    return UpstreamStatus(
        f"{what} answered {status}: {text[:300]}",
        status=status,
        body=text,
        expert=expert,
        url=url,
    )
