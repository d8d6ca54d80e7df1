"""Swap by starting and stopping one vLLM server process per expert (works on CPU; slow: ~40 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field

from coe.errors import ConfigError, ExpertUnavailable, UpstreamError
from coe.experts.schema import LocalServer
from coe.local.vllm_server import VllmServer
from coe.pool.controllers.base import ControllerParams, PoolContext, SwapController


class ProcessParams(ControllerParams):
    servers: dict[str, LocalServer] = Field(description="expert name -> its vLLM server")
    host: str = Field(
        "127.0.0.1", min_length=1, description="address the servers bind to and are called at"
    )


class ProcessController(SwapController):
    kind = "process"
    Params = ProcessParams

    @classmethod
    def driven_urls(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        return []  # it starts its servers inside the pool service's container

    def __init__(
        self,
        servers: dict[str, LocalServer],
        log_dir: Path | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        host: str = "127.0.0.1",
    ):
        self.specs = servers
        self.log_dir = log_dir
        self.http = http
        self.host = host
        self.servers: dict[str, VllmServer] = {}

    @classmethod
    def from_config(cls, params: ProcessParams, pool: PoolContext) -> ProcessController:
        missing = sorted({e.name for e in pool.experts} - set(params.servers))
        if missing:
            raise ConfigError(
                f"pools.{pool.name}.params.servers: no server for {', '.join(missing)}"
            )
        return cls(params.servers, http=pool.http, host=params.host)

    def upstream(self, expert: str) -> str:
        return f"http://{self.host}:{self.specs[expert].port}"

    def _server(self, expert: str) -> VllmServer:
        server = self.servers.get(expert)
        if server is None:
            spec = self.specs[expert]
            log_path = self.log_dir / f"vllm-{spec.log_name}.log" if self.log_dir else None
            server = self.servers[expert] = VllmServer.of(spec, log_path=log_path)
            server.host = self.host
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
        if await self._answers(expert):
            raise ExpertUnavailable(
                f"expert {expert}: a server still answers at {self.upstream(expert)} after "
                "stopping; this pool service did not start it (stop it by hand)",
                expert=expert,
                url=self.upstream(expert),
            )

    async def resident(self) -> set[str]:
        """Experts whose server this controller runs, or whose port answers anyway."""
        running = {e for e, s in self.servers.items() if s.running()}
        return running | {e for e in self.specs if e not in running and await self._answers(e)}

    async def _answers(self, expert: str) -> bool:
        """Whether anything serves the expert's port: only a refused connection says no."""
        url = f"{self.upstream(expert)}/health"
        try:
            if self.http is None:
                async with httpx.AsyncClient() as http:
                    await http.get(url, timeout=2.0)
            else:
                await self.http.get(url, timeout=2.0)
        except httpx.ConnectError:
            return False
        except httpx.HTTPError:
            return True  # something holds the port but does not answer in time
        return True

    async def close(self) -> None:
        for server in self.servers.values():
            await asyncio.to_thread(server.stop)
