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
    RebuildPublic,
    ReloadPublic,
    ReloadRequest,
)
from coe.gateway.auth import AdminDep
from coe.gateway.json_body import BoundedBodyRoute
from coe.security.egress import EgressPolicy
from coe.web.deps import RuntimeDep

router = APIRouter(prefix="/admin", tags=["admin"], route_class=BoundedBodyRoute)


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
    await EgressPolicy.from_settings(runtime.settings).check_async(spec.base_urls())
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
    await EgressPolicy.from_settings(runtime.settings).check_async(spec.base_urls())
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
    spec = runtime.registry.get(name)
    await EgressPolicy.from_settings(runtime.settings).check_async(spec.base_urls())
    return await probe_expert(runtime.client, spec)


@router.get("/pools")
async def pool_states(_: AdminDep, runtime: RuntimeDep) -> dict[str, Any]:
    """What each pool service last published, as this replica routes by it."""
    states = runtime.pools.states() if runtime.pools is not None else {}
    unavailable = sorted(runtime.pools.unavailable()) if runtime.pools is not None else []
    return {"pools": dict(states), "unavailable": unavailable}


@router.post("/reload")
async def reload_config(
    _: AdminDep, runtime: RuntimeDep, body: ReloadRequest | None = None
) -> ReloadPublic:
    """Read and validate this replica's experts.yaml, build it aside and swap it in, then
    store it as the config every replica serves (they load it from the store, not their
    own file). A file that is invalid or does not build changes nothing anywhere."""
    done = await runtime.reload_config()
    if body is not None and body.reseed_experts:
        await runtime.registry.seed(runtime.config, overwrite=True)
    return ReloadPublic.of(
        done,
        runtime.replica_id,
        list(runtime.registry.snapshot()),
        runtime.registry.version,
        str(runtime.settings.experts_file),
    )


@router.post("/routers/rebuild")
async def rebuild_routers(_: AdminDep, runtime: RuntimeDep) -> RebuildPublic:
    """Set every router up again from its artefacts (store, then disk) in a new engine,
    swap it in whole, then have every other replica do the same. A router that fails to
    build leaves the old engine serving, and the error names it."""
    done = await runtime.rebuild_routers()
    return RebuildPublic.of(done, runtime.replica_id)


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
