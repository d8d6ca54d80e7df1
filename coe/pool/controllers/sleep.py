"""Swap by vLLM sleep mode (level 1 parks weights in CPU memory; wakes in < 1 s): GPU only.

On vLLM's CPU backend /sleep answers 200, does nothing, and requests then hang, so the
backend is probed at start and a pool that cannot sleep is refused with a ConfigError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from coe.errors import ConfigError, ExpertUnavailable
from coe.pool.config import PoolSpec, SleepParams
from coe.pool.controllers.base import ExpertState, SwapController

if TYPE_CHECKING:
    from coe.experts.schema import ExpertSpec


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
    unloaded_state = ExpertState.ASLEEP

    def __init__(self, http: httpx.AsyncClient, servers: dict[str, str], level: int = 1):
        self.http = http
        self.servers = {e: url.rstrip("/") for e, url in servers.items()}
        self.level = level

    @classmethod
    def from_spec(
        cls, spec: PoolSpec, experts: Sequence[ExpertSpec], http: httpx.AsyncClient
    ) -> SleepController:
        try:
            params = SleepParams.model_validate(spec.params)
        except ValidationError as err:
            raise ConfigError(f"sleep pool params: {err}") from None
        servers = {e.name: params.servers.get(e.name) or e.base_urls()[0] for e in experts}
        return cls(http, servers, params.level)

    async def _probe(self, expert: str, url: str) -> bool:
        """Refuses a server that cannot sleep; returns whether it is awake now."""
        where = f"sleep pool: expert {expert} at {url}"
        try:
            resp = await self.http.get(f"{url}/server_info", params={"config_format": "json"})
        except httpx.HTTPError as err:
            raise ConfigError(f"{where} is unreachable: {type(err).__name__}: {err}") from err
        if resp.status_code == 404:
            raise ConfigError(
                f"{where} has no dev endpoints (start it with VLLM_SERVER_DEV_MODE=1)"
            )
        if resp.status_code >= 400:
            raise ConfigError(f"{where}: /server_info answered {resp.status_code}")
        reason = sleep_refusal(resp.json())
        if reason is not None:
            raise ConfigError(f"{where} cannot sleep: {reason}; use the process or lora controller")
        asleep = (await self.http.get(f"{url}/is_sleeping")).json().get("is_sleeping")
        return asleep is False

    async def start(self) -> set[str]:
        return {e for e, url in self.servers.items() if await self._probe(e, url)}

    async def load(self, expert: str) -> None:
        await self._post(expert, "/wake_up", {})

    async def unload(self, expert: str) -> None:
        await self._post(expert, "/sleep", {"level": str(self.level)})

    async def _post(self, expert: str, path: str, params: dict[str, str]) -> None:
        url = self.servers[expert]
        try:
            resp = await self.http.post(url + path, params=params, timeout=120.0)
        except httpx.HTTPError as err:
            raise ExpertUnavailable(
                f"expert {expert}: {path} failed at {url}: {type(err).__name__}: {err}",
                expert=expert,
                url=url,
            ) from err
        if resp.status_code >= 400:
            raise ExpertUnavailable(
                f"expert {expert}: {path} answered {resp.status_code} at {url}",
                expert=expert,
                url=url,
            )
