"""Loopback helpers for tests and benchmarks: a free port, waiting for a server, Redis cleanup."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> bool:
    """Poll `check` until it holds; fails naming `what` when `timeout_s` passes first. Returns
    True, so `assert eventually(...)` reads as the assertion it is."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what or check}"
        time.sleep(0.05)
    return True


def wait_healthy(base_url: str, timeout_s: float = 60) -> None:
    """Poll `base_url`/health until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base_url} did not become healthy within {timeout_s:.0f} s")


def delete_prefix(redis_url: str, prefix: str) -> int:
    """Remove every key under `prefix` (what a test or benchmark run wrote)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        stale = list(client.scan_iter(match=prefix + "*"))
        return int(client.delete(*stale)) if stale else 0
    finally:
        client.close()
