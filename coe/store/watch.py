"""Keep a replica in step with the store: react to pub/sub notices, poll as a safety net.

Notices can be lost while the connection is down, so a periodic poll catches up;
both loops survive store outages and reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from coe.backoff import Backoff
from coe.errors import StoreUnavailable
from coe.store.base import Store

log = logging.getLogger(__name__)

Handler = Callable[[str], Awaitable[None]]


async def follow_channel(
    store: Store, channel: str, handler: Handler, retry_s: float = 1.0, max_retry_s: float = 10.0
) -> None:
    """Call `handler(message)` for each notice on `channel`, resubscribing after outages.

    Every attempt is followed by a pause, so a subscription that keeps failing (or ending)
    at once never spins; the pause doubles up to `max_retry_s` while attempts keep failing,
    and starts over once a subscription has lived through a message or `max_retry_s`."""
    backoff = Backoff(first_s=retry_s, max_s=max_retry_s)
    while True:
        backoff.started()  # a subscription that lived `max_retry_s` was up: a new outage
        why = "the subscription ended"
        try:
            async for message in store.subscribe(channel):
                backoff.healthy()
                await handler(message)
        except StoreUnavailable as err:
            why = err.message
        except (OSError, ConnectionError) as err:
            why = str(err)
        delay = backoff.next_delay()
        # Logged as a warning when the outage begins; the retries that follow, at debug.
        level = logging.WARNING if delay == retry_s else logging.DEBUG
        log.log(level, "lost %s notices (%s); retrying in %.0f s", channel, why, delay)
        await asyncio.sleep(delay)


async def poll(every_s: float, action: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `action` every `every_s` seconds; a store outage is logged once per outage."""
    down = False
    while True:
        await asyncio.sleep(every_s)
        try:
            await action()
        except StoreUnavailable as err:
            if not down:
                log.warning(
                    "%s: store unavailable, serving the last snapshot: %s", what, err.message
                )
            down = True
            continue
        if down:
            log.info("%s: store reachable again", what)
            down = False
