"""Start the configured local vLLM servers together and stop them together."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from coe.experts.schema import LocalServer
from coe.local.model import cache_dir, resolve_model
from coe.local.vllm_server import VllmServer

log = logging.getLogger(__name__)


def servers_for(specs: list[LocalServer]) -> list[VllmServer]:
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return [
        VllmServer(
            model_path=resolve_model(s.model),
            port=s.port,
            served_name=s.served_model_name,
            cpu_core=s.cpu_core,
            extra_args=list(s.args),
            log_path=logs / f"{s.name}.log",
        )
        for s in specs
    ]


async def start_all(servers: list[VllmServer], timeout_s: float = 400) -> dict[str, float]:
    """Start every server at once (they load in parallel) and wait for all to be healthy."""
    for s in servers:
        s.start()
    try:
        waited = await asyncio.gather(*(s.wait_healthy(timeout_s) for s in servers))
    except BaseException:
        stop_all(servers)
        raise
    return {s.served_name: w for s, w in zip(servers, waited, strict=True)}


def stop_all(servers: list[VllmServer]) -> None:
    for s in servers:
        s.stop()


def log_paths(servers: list[VllmServer]) -> list[Path]:
    return [s.log_path for s in servers if s.log_path is not None]
