"""Serve an ASGI app on a loopback port from a background thread (tests and benchmarks)."""

from __future__ import annotations

from typing import Self

from coe.testing._runner import ThreadedServer


class ServedApp(ThreadedServer):
    def start(self, timeout_s: float = 30) -> Self:  # type: ignore[override]  # chains
        super().start(timeout_s)
        return self
