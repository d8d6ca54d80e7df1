"""Down the ranked list: the first expert that answers wins; failures are kept, not swallowed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coe.dispatch.client import ExpertClient
from coe.errors import AllExpertsFailed, UpstreamError
from coe.experts.schema import ExpertSpec

log = logging.getLogger(__name__)


@dataclass
class Failure:
    """One expert that failed, as a client may see it: the kind, never the details."""

    expert: str
    error: str
    status: int
    kind: str | None = None

    @classmethod
    def of(cls, expert: str, err: UpstreamError) -> Failure:
        return cls(expert=expert, error=err.message, status=err.status_code, kind=err.code)


@dataclass
class Answer:
    """Who wrote the text the client gets, and the text: `response` whole, or a stream's
    `first` chunk and the `rest`. One type for both, so callers differ only where they must.

    `experts` lists every expert that answered (several after a fan-out), `aggregator` the
    model that synthesised or judged, and `fanout` what the fan-out did (`coe` metadata).
    """

    expert: str
    response: dict[str, Any] | None = None
    first: dict[str, Any] | None = None
    rest: AsyncIterator[dict[str, Any]] | None = None
    failures: list[Failure] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)
    aggregator: str | None = None
    fanout: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.experts:
            self.experts = [self.expert]

    @property
    def streaming(self) -> bool:
        return self.rest is not None

    @property
    def body(self) -> dict[str, Any]:
        """The finished response (non-streamed answers only)."""
        assert self.response is not None, "a streamed answer has no finished body"
        return self.response

    def stream(self) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
        """The first chunk and the rest (streamed answers only)."""
        assert self.first is not None and self.rest is not None, "not a streamed answer"
        return self.first, self.rest

    async def aclose(self) -> None:
        """Release a stream nobody will read (the client went away)."""
        if self.rest is not None:
            await self.rest.aclose()  # type: ignore[attr-defined]


def _resolve(names: Sequence[str], experts: Mapping[str, ExpertSpec]) -> list[ExpertSpec]:
    return [experts[n] for n in dict.fromkeys(names) if n in experts]


async def complete_ranked(
    client: ExpertClient,
    names: Sequence[str],
    experts: Mapping[str, ExpertSpec],
    body: dict[str, Any],
    priority: str | None = None,
    sender: str | None = None,
) -> Answer:
    errors: list[UpstreamError] = []
    failures: list[Failure] = []
    for expert in _resolve(names, experts):
        try:
            response = await client.complete(expert, body, priority, sender)
        except UpstreamError as err:
            if not err.retryable:
                raise
            errors.append(err)
            failures.append(Failure.of(expert.name, err))
            log.warning("falling back from expert %s: %s", expert.name, err.detail)
            continue
        return Answer(expert.name, response=response, failures=failures)
    raise _all_failed(errors, names)


async def stream_ranked(
    client: ExpertClient,
    names: Sequence[str],
    experts: Mapping[str, ExpertSpec],
    body: dict[str, Any],
) -> Answer:
    """Fall back only until an expert sends its first chunk; after that the stream is its."""
    errors: list[UpstreamError] = []
    failures: list[Failure] = []
    for expert in _resolve(names, experts):
        try:
            first, rest = await client.open_stream(expert, body)
        except UpstreamError as err:
            if not err.retryable:
                raise
            errors.append(err)
            failures.append(Failure.of(expert.name, err))
            log.warning(
                "falling back from expert %s before first token: %s", expert.name, err.detail
            )
            continue
        return Answer(expert.name, first=first, rest=rest, failures=failures)
    raise _all_failed(errors, names)


def _all_failed(errors: list[UpstreamError], names: Sequence[str]) -> AllExpertsFailed:
    """Experts and the kind of each failure (their messages are client-safe); the details
    stay in the errors, for the log."""
    if not errors:
        return AllExpertsFailed(f"none of the experts {list(names)} is registered", [])
    kinds = "; ".join(e.message for e in errors)
    return AllExpertsFailed(f"all {len(errors)} candidate experts failed: {kinds}", errors)
