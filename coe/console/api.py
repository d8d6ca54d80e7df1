"""/ui: the console's page and its data, under /ui/api. Read-only: experts are edited through
the admin API (/admin), which checks the admin token itself.

When COE_ADMIN_TOKEN or COE_METRICS_TOKEN is set, every /ui/api endpoint needs one of them
as a bearer token (401 otherwise); in dev mode with neither set, the data is open and the
admin token the gateway generated (see its log) is still what editing experts needs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from coe import __version__
from coe.errors import Unauthorized
from coe.experts.schema import ExpertSpec
from coe.observability.metrics import checked_metrics_token
from coe.runtime import Runtime
from coe.security import token_matches
from coe.security.redact import redact_url
from coe.web.auth import bearer
from coe.web.deps import RuntimeDep

STATIC = Path(__file__).resolve().parent / "static"
AUTH_MESSAGE = "The console needs `Authorization: Bearer <COE_ADMIN_TOKEN or COE_METRICS_TOKEN>`"
# The page loads only its own files and calls only this gateway.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def configured_tokens(runtime: Runtime) -> list[str]:
    """The tokens that open the console; empty when none is configured (dev mode, open)."""
    settings = runtime.settings
    admin_set = settings.admin_token is not None and bool(settings.admin_token.get_secret_value())
    metrics = checked_metrics_token(settings)
    if not admin_set and metrics is None:
        return []
    return [t for t in (runtime.admin_token, metrics) if t]


async def console_access(request: Request, runtime: RuntimeDep) -> None:
    tokens = configured_tokens(runtime)
    given = bearer(request)
    if tokens and not any(token_matches(given, t) for t in tokens):
        raise Unauthorized(AUTH_MESSAGE)


router = APIRouter(
    prefix="/ui/api", dependencies=[Depends(console_access)], include_in_schema=False
)


@router.get("/session")
async def session(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """What the page needs first: whether a token is needed, whether the one given may edit
    experts, and the models a query may name."""
    pipelines = list(runtime.engine.pipelines)
    return {
        "auth_required": bool(configured_tokens(runtime)),
        "admin": token_matches(bearer(request), runtime.admin_token),
        "replica": runtime.replica_id,
        "store": "redis" if runtime.settings.redis_url else "embedded",
        "version": __version__,
        "models": [f"coe/{name}" for name in pipelines],
        "default_expert": runtime.config.default_expert,
    }


@router.get("/mix")
async def routing_mix(runtime: RuntimeDep) -> dict[str, Any]:
    return await runtime.activity.mix()


@router.get("/requests")
async def recent_requests(
    runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> dict[str, Any]:
    return {"object": "list", "data": await runtime.activity.recent(limit)}


@router.get("/experts")
async def experts(runtime: RuntimeDep) -> dict[str, Any]:
    """Every registered expert with its health as this replica sees it (replicas that failed
    lately, pools reporting it unavailable) and, for pooled ones, what its pool publishes."""
    await runtime.registry.refresh()
    pools = runtime.pools
    published = dict(pools.states()) if pools is not None else {}
    unavailable = pools.unavailable() if pools is not None else set()
    data = [
        _expert(runtime, spec, published, unavailable)
        for spec in sorted(runtime.registry.snapshot().values(), key=lambda s: s.name)
    ]
    pool_rows = []
    for name in sorted(pools.pools) if pools is not None else []:
        state = published.get(name)
        pool_rows.append(
            {
                "name": name,
                "reachable": state is not None,
                "controller": state.get("controller") if state else None,
                "capacity": state.get("capacity") if state else None,
                "occupied": state.get("occupied") if state else None,
            }
        )
    return {"object": "list", "data": data, "pools": pool_rows, "replica": runtime.replica_id}


def _expert(
    runtime: Runtime,
    spec: ExpertSpec,
    published: dict[str, dict[str, Any]],
    unavailable: set[str],
) -> dict[str, Any]:
    now = time.monotonic()
    replicas = []
    if spec.name in runtime.client.states:  # called before: its replicas' state is known
        for replica in runtime.client.replicas(spec).replicas:
            replicas.append(
                {
                    "url": redact_url(replica.url),
                    "up": replica.available(now),
                    "inflight": replica.inflight,
                    "failures": replica.failures,
                    "retry_in_s": round(max(0.0, replica.down_until - now), 1),
                }
            )
    if spec.name in unavailable:
        health = "unavailable"
    elif not replicas:
        health = "unknown"
    elif all(r["up"] for r in replicas):
        health = "ok"
    elif any(r["up"] for r in replicas):
        health = "degraded"
    else:
        health = "down"
    pool_state = None
    if spec.pool is not None:
        pool_state = (published.get(spec.pool) or {}).get("experts", {}).get(spec.name)
    return {
        "name": spec.name,
        "model": spec.model,
        "endpoints": [redact_url(u) for u in spec.base_urls()],
        "description": spec.description,
        "skills": spec.skills,
        "cost": spec.cost,
        "limits": spec.limits.model_dump(),
        "pool": spec.pool,
        "health": health,
        "replicas": replicas,
        "pool_state": pool_state,  # {state, queue, active, retry_in_s} or None
    }


@router.get("/batches")
async def batches(
    runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=100)] = 50
) -> dict[str, Any]:
    """Every caller's batches, newest first (OpenAI's Batch objects)."""
    data, has_more = await runtime.batch_jobs.list(None, None, limit)
    return {"object": "list", "data": data, "has_more": has_more}


def install_console(app: FastAPI) -> None:
    """Mount the console on the gateway: the page at /ui, its files under /ui/, its data
    under /ui/api; none of it in the OpenAPI document."""
    app.include_router(router)

    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    for path in ("/ui", "/ui/"):
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.mount("/ui", StaticFiles(directory=STATIC), name="console")
