"""One "doubling pause, reset once healthy" policy for every loop that retries: background
tasks that die, store subscriptions that drop, workers whose store is down.

    backoff = Backoff(first_s=1.0, max_s=30.0)
    while True:
        backoff.started()
        ...  # an attempt; on success: backoff.healthy()
        await backoff.sleep()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The pause before the next attempt: `first_s`, doubling up to `max_s` while attempts
    keep failing young; back to `first_s` once an attempt was healthy (`healthy()`) or lived
    at least `reset_after_s` (default `max_s`), so a new outage starts with a short pause."""

    first_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    delay_s: float = field(init=False)
    _started: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.first_s <= 0 or self.max_s < self.first_s:
            raise ValueError("backoff needs 0 < first_s <= max_s")
        self.delay_s = self.first_s

    def started(self) -> None:
        """An attempt begins now; one that lives long enough resets the pause."""
        self._started = self.clock()

    def healthy(self) -> None:
        """The attempt got somewhere (a message, a claim): the next outage starts afresh."""
        self.delay_s = self.first_s

    def next_delay(self) -> float:
        """The pause to take now, and the one after it doubled."""
        lived = None if self._started is None else self.clock() - self._started
        reset_after = self.max_s if self.reset_after_s is None else self.reset_after_s
        if lived is not None and lived >= reset_after:
            self.delay_s = self.first_s
        delay = self.delay_s
        self.delay_s = min(self.delay_s * 2, self.max_s)
        self._started = None
        return delay

    async def sleep(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
