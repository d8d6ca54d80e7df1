"""Which replica of an expert gets the next call: least busy, skipping recent failures."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Replica:
    url: str
    inflight: int = 0
    failures: int = 0
    down_until: float = 0.0

    def available(self, now: float) -> bool:
        return self.down_until <= now


class ReplicaSet:
    """Replica state for one expert. Not shared across processes, on purpose: it is a hint."""

    def __init__(self, urls: list[str], cooldown_s: float = 5.0):
        self.replicas = [Replica(u) for u in urls]
        self.cooldown_s = cooldown_s
        self._turn = 0

    def order(self) -> list[Replica]:
        """All replicas, best first: up before down, then fewest in flight, then round robin."""
        now = time.monotonic()
        self._turn += 1
        n = len(self.replicas)
        rotated = [self.replicas[(self._turn + i) % n] for i in range(n)]
        return sorted(rotated, key=lambda r: (not r.available(now), r.inflight))

    def succeeded(self, replica: Replica) -> None:
        replica.failures = 0
        replica.down_until = 0.0

    def failed(self, replica: Replica) -> None:
        replica.failures += 1
        backoff = min(self.cooldown_s * replica.failures, 60.0)
        replica.down_until = time.monotonic() + backoff
