"""Swap by starting and stopping one vLLM server process per expert (works on CPU; slow: ~40 s)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from coe.errors import ConfigError, ExpertUnavailable, UpstreamError
from coe.local.vllm_server import VllmServer
from coe.pool.config import PoolSpec, ProcessParams, ProcessServerSpec
from coe.pool.controllers.base import SwapController

if TYPE_CHECKING:
    from coe.experts.schema import ExpertSpec

log = logging.getLogger(__name__)


class ProcessController(SwapController):
    kind = "process"

    def __init__(self, servers: dict[str, ProcessServerSpec], log_dir: Path | None = None):
        self.specs = servers
        self.log_dir = log_dir
        self.servers: dict[str, VllmServer] = {}

    @classmethod
    def from_spec(
        cls, spec: PoolSpec, experts: Sequence[ExpertSpec], http: httpx.AsyncClient
    ) -> ProcessController:
        try:
            params = ProcessParams.model_validate(spec.params)
        except ValidationError as err:
            raise ConfigError(f"process pool params: {err}") from None
        missing = sorted({e.name for e in experts} - set(params.servers))
        if missing:
            raise ConfigError(f"process pool has no server for: {', '.join(missing)}")
        return cls(params.servers)

    def _server(self, expert: str) -> VllmServer:
        server = self.servers.get(expert)
        if server is None:
            from coe.local.model import resolve_model  # may convert a model once (~30 s)

            spec = self.specs[expert]
            log_path = self.log_dir / f"vllm-{expert}.log" if self.log_dir else None
            server = VllmServer(
                resolve_model(spec.model),
                spec.port,
                spec.served_model_name,
                cpu_core=spec.cpu_core,
                extra_args=list(spec.args),
                log_path=log_path,
            )
            self.servers[expert] = server
        return server

    async def load(self, expert: str) -> None:
        server = await asyncio.to_thread(self._server, expert)
        await asyncio.to_thread(server.start)
        try:
            await server.wait_healthy(timeout_s=self.specs[expert].start_timeout_s)
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
