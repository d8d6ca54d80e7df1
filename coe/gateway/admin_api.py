"""/admin: experts, their health, routing reloads and API keys. Token-protected, thin."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from fastapi import APIRouter, Response

from coe.errors import Conflict
from coe.experts.schema import ExpertSpec
from coe.gateway.admin_wire import (
    ExpertCreate,
    ExpertPublic,
    ExpertUpdate,
    KeyCreate,
    ReloadRequest,
)
from coe.gateway.auth import AdminDep
from coe.gateway.deps import ServicesDep
from coe.store import keys

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/experts")
async def list_experts(_: AdminDep, services: ServicesDep) -> dict[str, Any]:
    await services.registry.refresh()
    experts = [ExpertPublic.of(e) for e in services.registry.snapshot().values()]
    return {"object": "list", "data": experts, "version": services.registry.version}


@router.post("/experts", status_code=201)
async def create_expert(body: ExpertCreate, _: AdminDep, services: ServicesDep) -> ExpertPublic:
    await services.registry.refresh()
    if body.name in services.registry.snapshot():
        raise Conflict(f"expert {body.name!r} already exists; PATCH /admin/experts/{body.name}")
    spec = body.to_spec()
    await services.registry.upsert(spec)
    return ExpertPublic.of(spec)


@router.get("/experts/{name}")
async def get_expert(name: str, _: AdminDep, services: ServicesDep) -> ExpertPublic:
    await services.registry.refresh()
    return ExpertPublic.of(services.registry.get(name))


@router.patch("/experts/{name}")
async def update_expert(
    name: str, body: ExpertUpdate, _: AdminDep, services: ServicesDep
) -> ExpertPublic:
    await services.registry.refresh()
    spec = body.apply(services.registry.get(name))
    await services.registry.upsert(spec)
    return ExpertPublic.of(spec)


@router.delete("/experts/{name}", status_code=204)
async def delete_expert(name: str, _: AdminDep, services: ServicesDep) -> Response:
    if name == services.config.default_expert:
        raise Conflict(f"{name!r} is the default expert; change default_expert first")
    await services.registry.remove(name)
    return Response(status_code=204)


async def _probe(http: httpx.AsyncClient, spec: ExpertSpec, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": base}
    started = time.perf_counter()
    try:
        health = await http.get(f"{base}/health", timeout=5)
        out["health"] = health.status_code
        models = await http.get(f"{base}/v1/models", timeout=5)
        served = [m.get("id") for m in models.json().get("data", [])] if models.is_success else []
        out["models"] = served
        out["serves_model"] = spec.model in served
        out["ok"] = health.status_code == 200 and out["serves_model"]
    except (httpx.HTTPError, ValueError) as err:
        out.update(ok=False, error=f"{type(err).__name__}: {err}")
    out["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


@router.get("/experts/{name}/health")
async def expert_health(name: str, _: AdminDep, services: ServicesDep) -> dict[str, Any]:
    spec = services.registry.get(name)
    probes = await asyncio.gather(*(_probe(services.http, spec, u) for u in spec.base_urls()))
    return {"expert": name, "ok": all(p["ok"] for p in probes), "endpoints": probes}


@router.post("/reload")
async def reload_config(
    _: AdminDep, services: ServicesDep, body: ReloadRequest | None = None
) -> dict[str, Any]:
    """Re-read experts.yaml here and tell every other replica to do the same."""
    engine = await services.reload_config()
    if body is not None and body.reseed_experts:
        await services.registry.seed(services.config, overwrite=True)
    await services.store.publish(keys.CONFIG_RELOAD_CHANNEL, services.replica_id)
    return {
        "pipelines": list(engine.pipelines),
        "routers": sorted(engine.routers),
        "experts": list(services.registry.snapshot()),
        "version": services.registry.version,
    }


@router.post("/routers/rebuild")
async def rebuild_routers(_: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """Reload every router's artefacts (profiles, instructions, examples) from disk."""
    rebuilt = []
    for name, r in services.engine.routers.items():
        await r.setup()
        rebuilt.append(name)
    return {"rebuilt": sorted(rebuilt)}


@router.get("/keys")
async def list_keys(_: AdminDep, services: ServicesDep) -> dict[str, Any]:
    return {"object": "list", "data": [k.public() for k in await services.api_keys.list()]}


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, _: AdminDep, services: ServicesDep) -> dict[str, Any]:
    rpm = body.rate_limit_rpm or services.settings.default_rate_limit_rpm
    record, secret = await services.api_keys.create(body.name, rpm)
    return {**record.public(), "key": secret, "note": "store this key now; it is not shown again"}


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, _: AdminDep, services: ServicesDep) -> Response:
    await services.api_keys.revoke(key_id)
    return Response(status_code=204)
