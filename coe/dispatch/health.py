"""Is an expert up? Each endpoint's /health and whether its /v1/models serves the expert's model.

Probes go out with the expert's own API key, like its chat calls, so a protected upstream
reports its real state instead of 401. Endpoints are shown with their credentials masked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from coe.dispatch.client import ExpertClient
from coe.experts.schema import ExpertSpec
from coe.security.redact import redact_text, redact_url

PROBE_TIMEOUT_S = 5.0


async def probe_endpoint(client: ExpertClient, expert: ExpertSpec, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": redact_url(base)}
    headers = client.headers(expert)
    started = time.perf_counter()
    try:
        health = await client.http.get(f"{base}/health", headers=headers, timeout=PROBE_TIMEOUT_S)
        out["health"] = health.status_code
        models = await client.http.get(
            f"{base}/v1/models", headers=headers, timeout=PROBE_TIMEOUT_S
        )
        served = [m.get("id") for m in models.json().get("data", [])] if models.is_success else []
        out["models"] = served
        out["serves_model"] = expert.model in served
        out["ok"] = health.status_code == 200 and out["serves_model"]
    except (httpx.HTTPError, ValueError, AttributeError) as err:
        out.update(ok=False, error=redact_text(f"{type(err).__name__}: {err}"))
    out["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


async def probe_expert(client: ExpertClient, expert: ExpertSpec) -> dict[str, Any]:
    """Every endpoint probed at once; the expert is ok when all of them are."""
    probes = await asyncio.gather(
        *(probe_endpoint(client, expert, url) for url in expert.base_urls())
    )
    return {"expert": expert.name, "ok": all(p["ok"] for p in probes), "endpoints": list(probes)}
