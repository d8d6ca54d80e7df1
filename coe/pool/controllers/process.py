"""Swap by starting and stopping one vLLM server process per expert (works on CPU; slow: ~40 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import Field

from coe.errors import ConfigError, ExpertUnavailable, UpstreamError
from coe.experts.schema import LocalServer
from coe.local.vllm_server import VllmServer
from coe.pool.controllers.base import ControllerParams, PoolContext, SwapController


class ProcessParams(ControllerParams):
    servers: dict[str, LocalServer] = Field(description="expert name -> its vLLM server")


class ProcessController(SwapController):
    kind = "process"
    Params = ProcessParams

    def __init__(self, servers: dict[str, LocalServer], log_dir: Path | None = None):
        self.specs = servers
        self.log_dir = log_dir
        self.servers: dict[str, VllmServer] = {}

    @classmethod
    def from_config(cls, params: ProcessParams, pool: PoolContext) -> ProcessController:
        missing = sorted({e.name for e in pool.experts} - set(params.servers))
        if missing:
            raise ConfigError(
                f"pools.{pool.name}.params.servers: no server for {', '.join(missing)}"
            )
        return cls(params.servers)

    def _server(self, expert: str) -> VllmServer:
        server = self.servers.get(expert)
        if server is None:
            spec = self.specs[expert]
            log_path = self.log_dir / f"vllm-{spec.log_name}.log" if self.log_dir else None
            server = self.servers[expert] = VllmServer.of(spec, log_path=log_path)
        return server

    async def load(self, expert: str) -> None:
        server = await asyncio.to_thread(self._server, expert)  # may convert a model (~30 s)
        await asyncio.to_thread(server.start)
        try:
            await server.wait_healthy()
        except UpstreamError as err:
            await asyncio.to_thread(server.stop)
            raise ExpertUnavailable(
                f"could not start expert {expert}: {err.message}", expert=expert
            ) from err

    async def unload(self, expert: str) -> None:
        server = self.servers.get(expert)
        if server is not None:
            await asyncio.to_thread(server.stop)

    async def close(self) -> None:
        for server in self.servers.values():
            await asyncio.to_thread(server.stop)
