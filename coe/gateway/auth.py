"""Authentication dependencies: the admin token for /admin, API keys for the chat API."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from coe.errors import RateLimited, Unauthorized
from coe.routing import Caller
from coe.security import ApiKey, token_matches
from coe.web.auth import bearer
from coe.web.deps import RuntimeDep


async def require_admin(request: Request, runtime: RuntimeDep) -> None:
    if not token_matches(bearer(request), runtime.admin_token):
        raise Unauthorized("Admin endpoints need `Authorization: Bearer <COE_ADMIN_TOKEN>`")


async def client_key(request: Request, runtime: RuntimeDep) -> ApiKey | None:
    """With COE_REQUIRE_API_KEY, every chat call needs a valid key within its rate limit."""
    if not runtime.settings.require_api_key:
        return None
    record = await runtime.api_keys.authenticate(bearer(request))
    try:
        await runtime.api_keys.check_rate(record)
    except RateLimited:
        runtime.metrics.rate_limited.inc()
        raise
    request.state.api_key_id = record.id
    return record


def caller_of(request: Request) -> Caller:
    """Who is asking, for the routers: the API key `client_key` authenticated (None when
    keys are off)."""
    return Caller(key_id=getattr(request.state, "api_key_id", None))


AdminDep = Annotated[None, Depends(require_admin)]
CallerDep = Annotated[Caller, Depends(caller_of)]
