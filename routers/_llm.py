"""Shared by the routers that ask an LLM (keywords, instructions) and cache its answers in the
store: a store outage only skips the cache, and an LLM that fails or hangs makes the router
abstain with the reason, so the pipeline's next router answers instead.

Private (leading underscore), so the plug-in loader does not treat it as a strategy.
"""

from __future__ import annotations

import logging

from coe.errors import CoeError, NotFound, StoreUnavailable, UpstreamError
from coe.routing import RouteDecision
from coe.store.base import Store

log = logging.getLogger(__name__)

# The LLM failed (an upstream error, its expert removed from the registry) or did not answer
# within the router's `llm_timeout_s`.
LLM_FAILURES: tuple[type[BaseException], ...] = (UpstreamError, NotFound, TimeoutError)

DEFAULT_CACHE_TTL_S = 7 * 24 * 3600.0
MAX_CACHE_TTL_S = 365 * 24 * 3600.0


async def cache_get(store: Store, key: str) -> str | None:
    """A cached answer, or None; with the store down the cache is skipped, not the query."""
    try:
        return await store.get(key)
    except StoreUnavailable as err:
        log.warning("routing cache skipped (store unavailable): %s", err.message)
        return None


async def cache_put(store: Store, key: str, value: str, ttl_s: float) -> None:
    """Remember an answer; with the store down it is simply not remembered this time."""
    try:
        await store.set(key, value, ttl_s=ttl_s)
    except StoreUnavailable as err:
        log.warning("routing cache not written (store unavailable): %s", err.message)


def abstain_llm_failed(
    router: str, role: str, expert: str, timeout_s: float, err: BaseException
) -> RouteDecision:
    """The router's abstention when its LLM failed or hung, saying which and why."""
    if isinstance(err, TimeoutError):
        reason = f"{role} {expert!r} did not answer within {timeout_s:g} s"
    else:
        detail = err.message if isinstance(err, CoeError) else str(err)
        reason = f"{role} {expert!r} failed: {detail}"
    log.warning("router %s abstains: %s", router, reason)
    return RouteDecision.abstain(router, reason, error=type(err).__name__)
