"""Fail fast while the store is down or hung: after a run of connection failures every call
is refused at once for a cool-down, then one probe is let through (half-open); a success
closes the circuit. A hung Redis then costs a request microseconds, not a socket timeout.

    closed --N consecutive failures--> open --cool-down--> half_open --probe ok--> closed
                                        ^                      |
                                        +----probe failed------+
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from coe.errors import StoreUnavailable

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive connection failures of one store; callers ask `allow()` before a
    call and report `succeeded()`, `failed(err)` or `abandoned()` (cancelled) after it."""

    def __init__(
        self,
        failures: int = 3,
        cool_down_s: float = 2.0,
        name: str = "Redis",
        clock: Callable[[], float] = time.monotonic,
    ):
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if cool_down_s <= 0:
            raise ValueError("cool_down_s must be positive")
        self.failures = failures
        self.cool_down_s = cool_down_s
        self.name = name
        self._clock = clock
        self._state: State = "closed"
        self._consecutive = 0
        self._opened_at = 0.0  # when the circuit last opened (or a probe last failed)
        self._down_since = 0.0  # when this outage began (for the "closed again" log)
        self._probing = False
        self._last_error = ""
        self.opened_count = 0  # how many outages opened the circuit since start

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_open(self) -> bool:
        """True while calls are refused (open, or half-open with its probe in flight)."""
        return self._state != "closed"

    def allow(self) -> None:
        """Return if a call may go to the store now; else raise StoreUnavailable at once."""
        if self._state == "closed":
            return
        now = self._clock()
        if self._state == "open":
            remaining = self._opened_at + self.cool_down_s - now
            if remaining > 0:
                raise self._refusal(f"next try in {remaining:.1f} s")
            self._state = "half_open"
        if self._probing:
            raise self._refusal("a probe is in flight")
        self._probing = True

    def succeeded(self) -> None:
        """The store answered (an error reply counts: the connection works)."""
        self._consecutive = 0
        self._probing = False
        if self._state != "closed":
            self._state = "closed"
            log.warning(
                "%s circuit closed: the store answers again after %.1f s",
                self.name,
                self._clock() - self._down_since,
            )

    def failed(self, err: BaseException) -> None:
        """The connection failed or timed out."""
        self._last_error = str(err) or type(err).__name__
        self._probing = False
        now = self._clock()
        if self._state == "half_open":  # the probe failed: wait another cool-down, quietly
            self._state, self._opened_at = "open", now
            return
        if self._state == "open":  # a call let through before the circuit opened
            return
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._state, self._opened_at, self._down_since = "open", now, now
            self.opened_count += 1
            log.warning(
                "%s circuit open after %d consecutive failures (last: %s); failing fast, "
                "probing every %.1f s",
                self.name,
                self._consecutive,
                self._last_error,
                self.cool_down_s,
            )

    def abandoned(self) -> None:
        """The call was cancelled before the store answered: it proves nothing either way."""
        self._probing = False

    def _refusal(self, why: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"{self.name} is unavailable: {self._consecutive} consecutive failures "
            f"(last: {self._last_error}); failing fast, {why}"
        )
