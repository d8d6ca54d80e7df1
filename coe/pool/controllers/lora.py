"""Swap LoRA adapters of one base model in and out of one vLLM server at run time.

The server runs with `--enable-lora --max-loras N` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True;
the request's `model` is the adapter name (the expert's `model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import Field

from coe.dispatch.http_errors import status_error, transport_error
from coe.errors import ConfigError, ExpertUnavailable
from coe.pool.controllers.base import ControllerParams, PoolContext, SwapController


class LoraParams(ControllerParams):
    """Experts that are LoRA adapters of one base model, loaded at run time into one server."""

    base_url: str = Field(min_length=1, description="the vLLM server started with --enable-lora")
    max_loras: int = Field(ge=1, description="the server's --max-loras: at most this resident")
    adapters: dict[str, str] = Field(description="expert name -> adapter folder on the server")


class LoraController(SwapController):
    kind = "lora"
    Params = LoraParams

    @classmethod
    def driven_urls(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        base = params.get("base_url")
        return [("base_url", base)] if isinstance(base, str) else []

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
    def from_config(cls, params: LoraParams, pool: PoolContext) -> LoraController:
        missing = sorted({e.name for e in pool.experts} - set(params.adapters))
        if missing:
            raise ConfigError(
                f"pools.{pool.name}.params.adapters: no adapter for {', '.join(missing)}"
            )
        adapters = {e.name: (e.model, params.adapters[e.name]) for e in pool.experts}
        return cls(pool.http, params.base_url, params.max_loras, adapters)

    @property
    def max_capacity(self) -> int:
        return self.max_loras

    async def resident(self) -> set[str]:
        resp = await self._request("GET", "/v1/models", None, "list models")
        try:
            served = {m.get("id") for m in resp.json().get("data", [])}
        except (ValueError, AttributeError, TypeError) as err:
            raise ExpertUnavailable(
                f"lora server {self.base_url}: /v1/models is not a model list", url=self.base_url
            ) from err
        return {expert for expert, (name, _) in self.adapters.items() if name in served}

    def upstream(self, expert: str) -> str:
        return self.base_url

    async def load(self, expert: str) -> None:
        name, path = self.adapters[expert]
        body = {"lora_name": name, "lora_path": path}
        await self._request("POST", "/v1/load_lora_adapter", body, f"load adapter {name}")

    async def unload(self, expert: str) -> None:
        name, _ = self.adapters[expert]
        body = {"lora_name": name}
        await self._request("POST", "/v1/unload_lora_adapter", body, f"unload adapter {name}")

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, what: str
    ) -> httpx.Response:
        url = self.base_url + path
        what = f"lora server {self.base_url}: {what}"
        try:
            resp = await self.http.request(method, url, json=body, timeout=60.0)
        except httpx.HTTPError as err:
            raise transport_error(err, what, url=self.base_url, kind=ExpertUnavailable) from err
        if resp.status_code >= 400:
            raise status_error(
                resp.status_code, resp.text, what, url=self.base_url, kind=ExpertUnavailable
            )
        return resp
