"""Swap LoRA adapters of one base model in and out of one vLLM server at run time.

The server runs with `--enable-lora --max-loras N` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True;
the request's `model` is the adapter name (the expert's `model`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from coe.errors import ConfigError, ExpertUnavailable
from coe.pool.config import LoraParams, PoolSpec
from coe.pool.controllers.base import SwapController

if TYPE_CHECKING:
    from coe.experts.schema import ExpertSpec

log = logging.getLogger(__name__)


class LoraController(SwapController):
    kind = "lora"

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        max_loras: int,
        adapters: dict[str, tuple[str, str]],
    ):
        """`adapters`: expert name -> (adapter name the server serves, adapter folder)."""
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.max_loras = max_loras
        self.adapters = adapters

    @classmethod
    def from_spec(
        cls, spec: PoolSpec, experts: Sequence[ExpertSpec], http: httpx.AsyncClient
    ) -> LoraController:
        try:
            params = LoraParams.model_validate(spec.params)
        except ValidationError as err:
            raise ConfigError(f"lora pool params: {err}") from None
        missing = sorted({e.name for e in experts} - set(params.adapters))
        if missing:
            raise ConfigError(f"lora pool has no adapter for: {', '.join(missing)}")
        adapters = {e.name: (e.model, params.adapters[e.name]) for e in experts}
        return cls(http, params.base_url, params.max_loras, adapters)

    @property
    def max_capacity(self) -> int:
        return self.max_loras

    async def start(self) -> set[str]:
        resp = await self._request("GET", "/v1/models", None, "list models")
        served = {m.get("id") for m in resp.json().get("data", [])}
        return {expert for expert, (name, _) in self.adapters.items() if name in served}

    async def load(self, expert: str) -> None:
        name, path = self.adapters[expert]
        body = {"lora_name": name, "lora_path": path}
        await self._request("POST", "/v1/load_lora_adapter", body, f"load adapter {name}")

    async def unload(self, expert: str) -> None:
        name, _ = self.adapters[expert]
        body = {"lora_name": name}
        await self._request("POST", "/v1/unload_lora_adapter", body, f"unload adapter {name}")

    async def _request(
        self, method: str, path: str, body: dict[str, str] | None, what: str
    ) -> httpx.Response:
        url = self.base_url + path
        try:
            resp = await self.http.request(method, url, json=body, timeout=60.0)
        except httpx.HTTPError as err:
            raise ExpertUnavailable(
                f"lora server {self.base_url}: {what} failed: {type(err).__name__}: {err}",
                url=self.base_url,
            ) from err
        if resp.status_code >= 400:
            raise ExpertUnavailable(
                f"lora server {self.base_url}: {what} answered {resp.status_code}: "
                f"{resp.text[:300]}",
                url=self.base_url,
            )
        return resp
