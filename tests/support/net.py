"""Loopback helpers for tests and benchmarks: a free port, waiting for a server, Redis cleanup."""

from __future__ import annotations

import socket
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
