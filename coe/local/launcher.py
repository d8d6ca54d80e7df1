"""Start the configured local vLLM servers together and stop them together."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from coe.experts.schema import LocalServer
from coe.local.model import cache_dir
from coe.local.vllm_server import VllmServer

log = logging.getLogger(__name__)


def servers_for(specs: list[LocalServer]) -> list[VllmServer]:
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return [VllmServer.of(s, log_path=logs / f"{s.log_name}.log") for s in specs]


async def already_serving(server: VllmServer) -> bool:
    """A healthy server on the port that serves the same model name can be reused."""
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            if (await client.get(f"{server.base_url}/health")).status_code != 200:
                return False
            models = (await client.get(f"{server.base_url}/v1/models")).json()
        except (httpx.HTTPError, ValueError):
            return False
    served = {m.get("id") for m in models.get("data", [])}
    return server.served_name in served


async def start_all(servers: list[VllmServer]) -> dict[str, float]:
    """Start every server at once (they load in parallel) and wait for all to be healthy,
    each for its own `start_timeout_s`.

    A port already answering for the same model is reused and left running at exit.
    """
    reused = [s for s in servers if await already_serving(s)]
    for s in reused:
        log.info("reusing the vLLM server already serving %s at %s", s.served_name, s.base_url)
        servers.remove(s)
    for s in servers:
        s.start()
    try:
        waited = await asyncio.gather(*(s.wait_healthy() for s in servers))
    except BaseException:
        stop_all(servers)
        raise
    return {
        **{s.served_name: 0.0 for s in reused},
        **{s.served_name: w for s, w in zip(servers, waited, strict=True)},
    }


def stop_all(servers: list[VllmServer]) -> None:
    for s in servers:
        s.stop()


def log_paths(servers: list[VllmServer]) -> list[Path]:
    return [s.log_path for s in servers if s.log_path is not None]
