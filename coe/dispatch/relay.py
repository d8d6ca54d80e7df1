"""Forward a request's raw bytes to a server and relay its answer as it arrives.

What the pool service does for the experts it fronts: the body is already what the expert
should see, so nothing is parsed or rebuilt; status, content type and body come back as
the server sent them, a stream chunk by chunk. Its callers are gateways, not chat clients:
errors keep the operator's wording (credentials masked), and the gateway sanitizes them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import httpx

from coe.dispatch.http_errors import transport_error
from coe.dispatch.sse import encode_event
from coe.security.redact import redact_url

log = logging.getLogger(__name__)

# Request headers worth passing on: the expert's key, what the caller accepts, its request id.
FORWARDED = ("authorization", "accept", "x-request-id")
# Response headers worth passing back besides the content type.
RELAYED = ("retry-after", "x-request-id")


def is_event_stream(resp: httpx.Response) -> bool:
    return resp.headers.get("content-type", "").startswith("text/event-stream")


def relayed_headers(resp: httpx.Response) -> dict[str, str]:
    return {k: resp.headers[k] for k in RELAYED if k in resp.headers}


async def open_upstream(
    http: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeouts: httpx.Timeout,
    expert: str,
) -> httpx.Response:
    """POST `body` to `url`; returns the response with its body not read yet (close it).

    No answer at all is an UpstreamError (502) or UpstreamTimeout (504); any status the
    server answers is the caller's to relay.
    """
    sent = {k: v for k, v in headers.items() if k.lower() in FORWARDED}
    sent["content-type"] = headers.get("content-type", "application/json")
    request = http.build_request("POST", url, content=body, headers=sent, timeout=timeouts)
    try:
        return await http.send(request, stream=True)
    except httpx.HTTPError as err:
        where = f"expert {expert} at {redact_url(url)}"
        raise transport_error(err, where, expert=expert, url=url) from err


async def read_all(resp: httpx.Response, *, expert: str) -> bytes:
    """The whole body of an answer that is not a stream."""
    try:
        return await resp.aread()
    except httpx.HTTPError as err:
        where = f"expert {expert} at {redact_url(str(resp.url))} (reading its answer)"
        raise transport_error(err, where, expert=expert) from err


async def relay_chunks(resp: httpx.Response, *, expert: str) -> AsyncIterator[bytes]:
    """The body as it arrives. A stream that breaks ends with an OpenAI error event (the
    status was sent long ago), so the caller sees a failure, never a short answer."""
    try:
        async for chunk in resp.aiter_bytes():
            yield chunk
    except httpx.HTTPError as err:
        where = f"expert {expert} at {redact_url(str(resp.url))} (streaming)"
        error = transport_error(err, where, expert=expert)
        log.warning("%s", error.detail)
        if is_event_stream(resp):
            yield encode_event(error.to_openai())
