"""/admin: experts, their health, routing reloads and API keys. Token-protected, thin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from coe.dispatch.health import probe_expert
from coe.errors import Conflict
from coe.gateway.admin_wire import (
    ExpertCreate,
    ExpertPublic,
    ExpertUpdate,
    KeyCreate,
    ReloadRequest,
)
from coe.gateway.auth import AdminDep
from coe.gateway.deps import RuntimeDep
from coe.store import keys

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/experts")
async def list_experts(_: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    await runtime.registry.refresh()
    experts = [ExpertPublic.of(e) for e in runtime.registry.snapshot().values()]
    return {"object": "list", "data": experts, "version": runtime.registry.version}


@router.post("/experts", status_code=201)
async def create_expert(body: ExpertCreate, _: AdminDep, runtime: RuntimeDep) -> ExpertPublic:
    await runtime.registry.refresh()
    if body.name in runtime.registry.snapshot():
        raise Conflict(f"expert {body.name!r} already exists; PATCH /admin/experts/{body.name}")
    spec = body.to_spec()
    await runtime.registry.upsert(spec)
    return ExpertPublic.of(spec)


@router.get("/experts/{name}")
async def get_expert(name: str, _: AdminDep, runtime: RuntimeDep) -> ExpertPublic:
    await runtime.registry.refresh()
    return ExpertPublic.of(runtime.registry.get(name))


@router.patch("/experts/{name}")
async def update_expert(
    name: str, body: ExpertUpdate, _: AdminDep, runtime: RuntimeDep
) -> ExpertPublic:
    await runtime.registry.refresh()
    spec = body.apply(runtime.registry.get(name))
    await runtime.registry.upsert(spec)
    return ExpertPublic.of(spec)


@router.delete("/experts/{name}", status_code=204)
async def delete_expert(name: str, _: AdminDep, runtime: RuntimeDep) -> Response:
    if name == runtime.config.default_expert:
        raise Conflict(f"{name!r} is the default expert; change default_expert first")
    await runtime.registry.remove(name)
    return Response(status_code=204)


@router.get("/experts/{name}/health")
async def expert_health(name: str, _: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    return await probe_expert(runtime.client, runtime.registry.get(name))


@router.get("/pools")
async def pool_states(_: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    """What each pool service last published, as this replica routes by it."""
    states = runtime.pools.states() if runtime.pools is not None else {}
    unavailable = sorted(runtime.pools.unavailable()) if runtime.pools is not None else []
    return {"pools": dict(states), "unavailable": unavailable}


@router.post("/reload")
async def reload_config(
    _: AdminDep, runtime: RuntimeDep, body: ReloadRequest | None = None
) -> dict[str, Any]:
    """Re-read experts.yaml here and tell every other replica to do the same."""
    engine = await runtime.reload_config()
    if body is not None and body.reseed_experts:
        await runtime.registry.seed(runtime.config, overwrite=True)
    await runtime.store.publish(keys.CONFIG_RELOAD_CHANNEL, runtime.replica_id)
    return {
        "pipelines": list(engine.pipelines),
        "routers": sorted(engine.routers),
        "experts": list(runtime.registry.snapshot()),
        "version": runtime.registry.version,
    }


@router.post("/routers/rebuild")
async def rebuild_routers(_: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Reload every router's artefacts (profiles, instructions, examples) from disk."""
    rebuilt = []
    for name, r in runtime.engine.routers.items():
        await r.setup()
        rebuilt.append(name)
    return {"rebuilt": sorted(rebuilt)}


@router.get("/keys")
async def list_keys(_: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    return {"object": "list", "data": [k.public() for k in await runtime.api_keys.list()]}


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, _: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    rpm = body.rate_limit_rpm or runtime.settings.default_rate_limit_rpm
    record, secret = await runtime.api_keys.create(body.name, rpm)
    return {**record.public(), "key": secret, "note": "store this key now; it is not shown again"}


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, _: AdminDep, runtime: RuntimeDep) -> Response:
    await runtime.api_keys.revoke(key_id)
    return Response(status_code=204)
