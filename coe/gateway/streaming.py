"""Chat answers as server-sent events: the relay of an expert's chunks, usage passed on only
when asked for, and keep-alive comments while a slow fan-out is still working.

A fan-out (k > 1) that is still working after `keepalive_s` starts its SSE response early and
sends `: keep-alive` comments until the answer streams, so that no client or proxy times out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from coe.dispatch import Answer
from coe.dispatch.sse import DONE, encode_comment, encode_event
from coe.errors import CoeError, UpstreamError
from coe.gateway.answer_meta import coe_headers, coe_meta, decision_headers
from coe.observability import Metrics
from coe.pipeline import Engine, Plan
from coe.web.errors import client_error, log_failure


def streaming(
    plan: Plan, answer: Answer, rid: str, want_usage: bool, metrics: Metrics
) -> StreamingResponse:
    return StreamingResponse(
        _sse(plan, answer, rid, want_usage, metrics),
        media_type="text/event-stream",
        headers={**coe_headers(plan, answer, rid), "cache-control": "no-cache"},
    )


async def fan_out_stream(
    engine: Engine,
    plan: Plan,
    body: dict[str, Any],
    rid: str,
    want_usage: bool,
    metrics: Metrics,
) -> StreamingResponse:
    """Answer normally if the fan-out is quick; otherwise start the stream and keep it alive.

    Started early, the response has no x-coe-expert header yet: the first data chunk's
    `coe` field names the experts, and an error arrives as an error event.
    """
    task = asyncio.create_task(engine.open_stream(plan, body), name=f"stream-{rid}")
    every = plan.aggregation.keepalive_s
    try:
        await asyncio.wait({task}, timeout=every)
    except asyncio.CancelledError:
        task.cancel()  # the request itself was cancelled: stop the experts too
        raise
    if task.done():
        return streaming(plan, task.result(), rid, want_usage, metrics)
    headers = {**decision_headers(plan.decision), "cache-control": "no-cache"}
    return StreamingResponse(
        _kept_alive(plan, task, every, rid, want_usage, metrics),
        media_type="text/event-stream",
        headers=headers,
    )


async def _kept_alive(
    plan: Plan,
    task: asyncio.Task[Answer],
    every: float,
    rid: str,
    want_usage: bool,
    metrics: Metrics,
) -> AsyncIterator[bytes]:
    relayed = False
    try:
        while not task.done():
            yield encode_comment("keep-alive")
            await asyncio.wait({task}, timeout=every)
        try:
            answer = task.result()
        except CoeError as err:
            log_failure(err, "fan-out failed after the stream began")
            yield encode_event(client_error(err, rid))
            return
        relayed = True
        async for piece in _sse(plan, answer, rid, want_usage, metrics):
            yield piece
    finally:
        if not task.done():  # the client went away: stop the experts too
            task.cancel()
        elif not relayed and not task.cancelled() and task.exception() is None:
            await task.result().aclose()


async def _sse(
    plan: Plan, answer: Answer, rid: str, want_usage: bool, metrics: Metrics
) -> AsyncIterator[bytes]:
    """Relay the expert's chunks; a failure after the first token ends with an error event."""
    metrics.observe_fallbacks([f.expert for f in answer.failures])
    first_chunk, rest = answer.stream()
    try:
        first = dict(first_chunk)
        first["coe"] = coe_meta(plan, answer, rid, first.get("model"))
        first["model"] = answer.expert
        yield encode_event(usage_filtered(first, want_usage) or first)
        try:
            async for chunk in rest:
                out = usage_filtered({**chunk, "model": answer.expert}, want_usage)
                if out is not None:
                    yield encode_event(out)
        except UpstreamError as err:
            log_failure(err, f"stream from {answer.expert} broke")
            body = client_error(err, rid)
            body["error"]["message"] = (
                f"The expert stream broke before it finished: {body['error']['message']}"
            )
            body["error"]["code"] = "stream_interrupted"
            yield encode_event(body)
            return
        yield encode_event(DONE)
    finally:
        await answer.aclose()


def usage_filtered(chunk: dict[str, Any], want_usage: bool) -> dict[str, Any] | None:
    """We always ask experts for usage; pass it on only if the client asked for it."""
    if want_usage:
        return chunk
    if not chunk.get("choices") and chunk.get("usage"):
        return None
    if "usage" in chunk:
        chunk = {k: v for k, v in chunk.items() if k != "usage"}
    return chunk
