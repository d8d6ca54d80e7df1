"""What each expert call took, for metrics: `ExpertCall`, reported to the client's observer,
and `UpstreamClock`, a request's time spent waiting on experts (so that the gateway can tell
its own overhead from the experts' time).

A request's clock rides in a context variable: the gateway starts one per request
(`measure_upstream`), and every expert call made on the request's behalf, in whatever task
it runs, adds to it. Overlapping calls (a fan-out) count once: the clock measures the wall
time during which at least one call was in flight.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Delta fields that carry generated tokens: the first one is a stream's first token.
GENERATED = ("content", "reasoning_content", "reasoning", "tool_calls")


@dataclass(frozen=True)
class ExpertCall:
    """One replica attempt, as the client saw it.

    `seconds` runs to the whole answer (a stream's end); `ttft_s` to a stream's first
    generated token (None for a call that is not streamed or sent none); `generation_s` is
    the time over which the completion tokens were generated (a stream: first token to end;
    otherwise the whole call); `usage` is the upstream's usage, when it sent one.
    """

    expert: str
    seconds: float
    ok: bool
    streamed: bool = False
    ttft_s: float | None = None
    generation_s: float | None = None
    usage: Mapping[str, Any] | None = None

    @property
    def completion_tokens(self) -> int | None:
        value = (self.usage or {}).get("completion_tokens")
        return value if isinstance(value, int) and value >= 0 else None

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens per second of generation, when both are known."""
        tokens, seconds = self.completion_tokens, self.generation_s
        if not self.ok or not tokens or seconds is None or seconds <= 0:
            return None
        return tokens / seconds


def has_token(chunk: Mapping[str, Any]) -> bool:
    """Whether a stream chunk carries generated text (or a tool call)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, Mapping) else None
        if isinstance(delta, Mapping) and any(delta.get(key) for key in GENERATED):
            return True
    return False


class UpstreamClock:
    """Wall time during which at least one expert call was in flight (calls may overlap)."""

    def __init__(self) -> None:
        self._open = 0
        self._since = 0.0
        self._total = 0.0

    def begin(self) -> None:
        if self._open == 0:
            self._since = time.perf_counter()
        self._open += 1

    def end(self) -> None:
        self._open -= 1
        if self._open == 0:
            self._total += time.perf_counter() - self._since

    @property
    def seconds(self) -> float:
        """The time counted so far (a call still in flight counts up to now)."""
        running = time.perf_counter() - self._since if self._open > 0 else 0.0
        return self._total + running


_clock: contextvars.ContextVar[UpstreamClock | None] = contextvars.ContextVar(
    "coe_upstream_clock", default=None
)


def measure_upstream() -> tuple[UpstreamClock, contextvars.Token[UpstreamClock | None]]:
    """Start a clock for the current request; `stop_measuring(token)` when it is done."""
    clock = UpstreamClock()
    return clock, _clock.set(clock)


def stop_measuring(token: contextvars.Token[UpstreamClock | None]) -> None:
    _clock.reset(token)


def current_clock() -> UpstreamClock | None:
    """The current request's clock; None outside a measured request (workers, the CLI)."""
    return _clock.get()


@contextmanager
def waiting(clock: UpstreamClock | None) -> Iterator[None]:
    """Count the block as time waiting on an expert."""
    if clock is None:
        yield
        return
    clock.begin()
    try:
        yield
    finally:
        clock.end()


@contextmanager
def paused(clock: UpstreamClock | None) -> Iterator[None]:
    """Inside `waiting`: a pause (a stream handing a chunk to its reader)."""
    if clock is None:
        yield
        return
    clock.end()
    try:
        yield
    finally:
        clock.begin()
