"""Stream shapes for aggregated answers: a finished answer as chunks, usage summed at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from coe.aggregation.fanout import sum_usage


def as_chunks(
    response: Mapping[str, Any], usage: dict[str, int]
) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
    """A complete chat response as the chunks a stream of it would have sent."""
    message = response["choices"][0].get("message") or {}
    base = {
        "id": response.get("id", "chatcmpl-coe"),
        "object": "chat.completion.chunk",
        "created": response.get("created", 0),
        "model": response.get("model", ""),
    }
    delta = {"role": "assistant", "content": message.get("content") or ""}
    first = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    finish = response["choices"][0].get("finish_reason") or "stop"

    async def rest() -> AsyncIterator[dict[str, Any]]:
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        yield {**base, "choices": [], "usage": usage}

    return first, rest()


async def with_usage(
    chunks: AsyncIterator[dict[str, Any]], earlier: dict[str, int]
) -> AsyncIterator[dict[str, Any]]:
    """Relay an aggregator's stream, adding the experts' tokens into its usage chunk."""
    try:
        async for chunk in chunks:
            if chunk.get("usage"):
                total = sum_usage([chunk, {"usage": earlier}])
                chunk = {**chunk, "usage": {**chunk["usage"], **total}}
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
