"""The one retry pause: doubles while attempts fail young, resets once healthy or long-lived."""

from __future__ import annotations

import pytest

from coe.backoff import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_doubles_up_to_the_cap_while_attempts_fail() -> None:
    backoff = Backoff(first_s=0.5, max_s=3.0, clock=Clock())
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_healthy_attempt_starts_the_next_outage_short() -> None:
    backoff = Backoff(first_s=1.0, max_s=8.0, clock=Clock())
    backoff.next_delay()
    backoff.next_delay()
    backoff.healthy()
    assert backoff.next_delay() == 1.0


def test_an_attempt_that_lived_long_resets_and_a_young_one_does_not() -> None:
    clock = Clock()
    backoff = Backoff(first_s=1.0, max_s=8.0, clock=clock)
    for _ in range(3):
        backoff.started()
        backoff.next_delay()
    backoff.started()
    clock.now += 7.9  # died young: the pause keeps growing
    assert backoff.next_delay() == 8.0
    backoff.started()
    clock.now += 8.0  # lived max_s: a new outage
    assert backoff.next_delay() == 1.0


def test_reset_after_can_differ_from_the_cap() -> None:
    clock = Clock()
    backoff = Backoff(first_s=1.0, max_s=8.0, reset_after_s=2.0, clock=clock)
    backoff.next_delay()
    backoff.started()
    clock.now += 2.0
    assert backoff.next_delay() == 1.0


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (2.0, 1.0)])
def test_bad_bounds_are_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < first_s <= max_s"):
        Backoff(first_s=first, max_s=cap)
