"""Swap by vLLM sleep mode (level 1 parks weights in CPU memory; wakes in < 1 s): GPU only.

On vLLM's CPU backend /sleep answers 200, does nothing, and requests then hang, so the
backend is probed at start and a pool that cannot sleep is refused with a ConfigError.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field

from coe.dispatch.http_errors import status_error, transport_error
from coe.errors import ConfigError, ExpertUnavailable, UpstreamError
from coe.pool.controllers.base import ControllerParams, ExpertState, PoolContext, SwapController


class SleepParams(ControllerParams):
    """Each expert's own vLLM server (GPU, --enable-sleep-mode, VLLM_SERVER_DEV_MODE=1)."""

    servers: dict[str, str] = Field(description="expert name -> base URL of its vLLM server")
    level: Literal[1, 2] = 1


def sleep_refusal(info: dict[str, Any]) -> str | None:
    """Why a server (its /server_info?config_format=json) cannot sleep, or None if it can."""
    config = info.get("vllm_config")
    if not isinstance(config, dict):
        return "its /server_info has no vllm_config"
    device = config.get("device_config") or {}
    kind = (
        str(device.get("device_type") or device.get("device") or "")
        if isinstance(device, dict)
        else str(device)
    )
    if "cpu" in kind.lower():
        return "it runs on the CPU backend, which has no sleep mode"
    model = config.get("model_config") or {}
    if not (isinstance(model, dict) and model.get("enable_sleep_mode") is True):
        return "it was not started with --enable-sleep-mode"
    return None


class SleepController(SwapController):
    kind = "sleep"
    servers_param = "servers"
    needs_sleep_mode = True
    Params = SleepParams
    unloaded_state = ExpertState.ASLEEP

    def __init__(self, http: httpx.AsyncClient, servers: dict[str, str], level: int = 1):
        self.http = http
        self.servers = {e: url.rstrip("/") for e, url in servers.items()}
        self.level = level

    @classmethod
    def from_config(cls, params: SleepParams, pool: PoolContext) -> SleepController:
        missing = sorted({e.name for e in pool.experts} - set(params.servers))
        if missing:
            raise ConfigError(
                f"pools.{pool.name}.params.servers: no server for {', '.join(missing)}"
            )
        servers = {e.name: params.servers[e.name] for e in pool.experts}
        return cls(pool.http, servers, params.level)

    async def _probe(self, expert: str, url: str) -> None:
        """Refuses a server that cannot sleep."""
        where = f"sleep pool: expert {expert} at {url}"
        info = await self._get(expert, f"{url}/server_info", {"config_format": "json"})
        if info is None:
            raise ConfigError(
                f"{where} has no dev endpoints (start it with VLLM_SERVER_DEV_MODE=1)"
            )
        reason = sleep_refusal(info)
        if reason is not None:
            raise ConfigError(f"{where} cannot sleep: {reason}; use the process or lora controller")

    async def start(self) -> set[str]:
        for expert, url in self.servers.items():
            await self._probe(expert, url)
        return await self.resident()

    async def resident(self) -> set[str]:
        """The awake servers (`GET /is_sleeping` answers false)."""
        awake = set()
        for expert, url in self.servers.items():
            state = await self._get(expert, f"{url}/is_sleeping", {})
            if state is None:
                raise ExpertUnavailable(
                    f"sleep pool: expert {expert} at {url} has no /is_sleeping "
                    "(start it with VLLM_SERVER_DEV_MODE=1)",
                    expert=expert,
                    url=url,
                )
            if state.get("is_sleeping") is False:
                awake.add(expert)
        return awake

    def upstream(self, expert: str) -> str:
        return self.servers[expert]

    async def load(self, expert: str) -> None:
        await self._post(expert, "/wake_up", {})

    async def unload(self, expert: str) -> None:
        await self._post(expert, "/sleep", {"level": str(self.level)})

    async def _get(self, expert: str, url: str, params: dict[str, str]) -> dict[str, Any] | None:
        """A dev endpoint's JSON, or None when the server has no such endpoint (404)."""
        what = f"expert {expert}: GET {url}"
        try:
            resp = await self.http.get(url, params=params)
        except httpx.HTTPError as err:
            raise transport_error(err, what, expert=expert, url=url) from err
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise status_error(resp.status_code, resp.text, what, expert=expert, url=url)
        try:
            body = resp.json()
        except ValueError as err:
            raise UpstreamError(f"{what} answered no JSON", expert=expert, url=url) from err
        return body if isinstance(body, dict) else {}

    async def _post(self, expert: str, path: str, params: dict[str, str]) -> None:
        url = self.servers[expert]
        what = f"expert {expert}: POST {url}{path}"
        try:
            resp = await self.http.post(url + path, params=params, timeout=120.0)
        except httpx.HTTPError as err:
            raise transport_error(
                err, what, expert=expert, url=url, kind=ExpertUnavailable
            ) from err
        if resp.status_code >= 400:
            raise status_error(
                resp.status_code, resp.text, what, expert=expert, url=url, kind=ExpertUnavailable
            )
