"""Swap and queue figures per pool and expert, in plain Python so the gateway can export them.

Counters and histograms keyed by (pool, expert); `snapshot()` gives a JSON-able view.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SWAP_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# What Prometheus shows of an expert's state: on the device (resident), parked off it
# (asleep), on its way (loading), or not held at all (stopped, unloading, unavailable).
SHOWN_STATES = ("resident", "asleep", "loading", "unloaded")


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)
        index = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self.counts[index] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.count, "sum": round(self.total, 6), "max": round(self.maximum, 6)}


Key = tuple[str, str]


@dataclass
class PoolMetrics:
    """One per process, shared by every pool; the pools write, exporters read."""

    loads: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    unloads: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    failures: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    swap_seconds: dict[Key, Histogram] = field(default_factory=dict)
    wait_seconds: dict[Key, Histogram] = field(default_factory=dict)
    queue_depth: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    swaps: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wake_seconds: dict[Key, Histogram] = field(default_factory=dict)
    states: dict[Key, str] = field(default_factory=dict)  # one of SHOWN_STATES

    def swap_started(self, pool: str) -> None:
        self.swaps[pool] += 1

    def state(self, pool: str, expert: str, state: str) -> None:
        """The expert's state as the pool sets it (an `ExpertState` value)."""
        value = str(state)
        self.states[pool, expert] = value if value in SHOWN_STATES else "unloaded"

    def swapped_in(self, pool: str, expert: str, seconds: float) -> None:
        """A load or wake done: `seconds` from asking the controller to its answer."""
        self.loads[pool, expert] += 1
        self._hist(self.swap_seconds, pool, expert, SWAP_BUCKETS).observe(seconds)
        self._hist(self.wake_seconds, pool, expert, SWAP_BUCKETS).observe(seconds)

    def swapped_out(self, pool: str, expert: str, seconds: float) -> None:
        self.unloads[pool, expert] += 1
        self._hist(self.swap_seconds, pool, expert, SWAP_BUCKETS).observe(seconds)

    def failed(self, pool: str, expert: str) -> None:
        self.failures[pool, expert] += 1

    def waited(self, pool: str, expert: str, seconds: float) -> None:
        self._hist(self.wait_seconds, pool, expert, WAIT_BUCKETS).observe(seconds)

    def depth(self, pool: str, expert: str, depth: int) -> None:
        self.queue_depth[pool, expert] = depth

    def total_loads(self, pool: str | None = None) -> int:
        return sum(n for (p, _), n in self.loads.items() if pool is None or p == pool)

    def swap_time(self, pool: str | None = None) -> float:
        return sum(h.total for (p, _), h in self.swap_seconds.items() if pool is None or p == pool)

    @staticmethod
    def _hist(
        table: dict[Key, Histogram], pool: str, expert: str, b: tuple[float, ...]
    ) -> Histogram:
        hist = table.get((pool, expert))
        if hist is None:
            hist = table[pool, expert] = Histogram(b)
        return hist

    def snapshot(self) -> dict[str, Any]:
        keys = sorted(set(self.loads) | set(self.wait_seconds) | set(self.failures))
        return {
            f"{p}/{e}": {
                "loads": self.loads.get((p, e), 0),
                "unloads": self.unloads.get((p, e), 0),
                "failures": self.failures.get((p, e), 0),
                "queue_depth": self.queue_depth.get((p, e), 0),
                "swap_seconds": self._hist(self.swap_seconds, p, e, SWAP_BUCKETS).snapshot(),
                "wait_seconds": self._hist(self.wait_seconds, p, e, WAIT_BUCKETS).snapshot(),
            }
            for p, e in keys
        }
