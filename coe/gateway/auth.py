"""Authentication dependencies: the admin token for /admin, API keys for the chat API."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from coe.errors import RateLimited, Unauthorized
from coe.gateway.deps import ServicesDep
from coe.security import ApiKey, token_matches


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def require_admin(request: Request, services: ServicesDep) -> None:
    if not token_matches(bearer(request), services.admin_token):
        raise Unauthorized("Admin endpoints need `Authorization: Bearer <COE_ADMIN_TOKEN>`")


async def client_key(request: Request, services: ServicesDep) -> ApiKey | None:
    """With COE_REQUIRE_API_KEY, every chat call needs a valid key within its rate limit."""
    if not services.settings.require_api_key:
        return None
    record = await services.api_keys.authenticate(bearer(request))
    try:
        await services.api_keys.check_rate(record)
    except RateLimited:
        services.metrics.rate_limited.inc()
        raise
    request.state.api_key_id = record.id
    return record


AdminDep = Annotated[None, Depends(require_admin)]
ClientKeyDep = Annotated[ApiKey | None, Depends(client_key)]
