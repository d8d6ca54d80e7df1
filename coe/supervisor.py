"""A process's background work under one supervisor: named loops that run for the life of the
process, restarted (after a `coe.backoff` pause) when they die, stopped together on close.
The fronts decide which loops run: the gateway's lifespan and `coe worker` start them here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from coe.backoff import Backoff
from coe.batch import BatchWorker
from coe.store import keys
from coe.store.watch import Handler, follow_channel, poll

if TYPE_CHECKING:
    from coe.runtime import Runtime

log = logging.getLogger(__name__)

CLOSE_GRACE_S = 10.0


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
) -> None:
    """Run a background task for the life of the process: if it dies, log why and start it
    again (after a pause that doubles while it keeps dying young)."""
    backoff = Backoff(first_s=backoff_s, max_s=max_backoff_s)
    while True:
        backoff.started()
        try:
            await run()
            return
        except Exception:  # the process serves on; the task is restarted, not ignored
            log.exception("%s died; restarting it in %.0f s", name, backoff.delay_s)
        await backoff.sleep()


class Supervisor:
    """The background loops of one process. `start` runs a loop under `supervise`; `close`
    asks them to stop (`stopping`), cancels them, and leaves behind with an error whatever
    has not stopped within `grace_s`, never waiting longer. Usable as `async with`."""

    def __init__(self, grace_s: float = CLOSE_GRACE_S) -> None:
        self.grace_s = grace_s
        self.stopping = asyncio.Event()  # loops that stop cleanly watch this
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        task = asyncio.create_task(supervise(name, run), name=name)
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=self.grace_s)
            for task in stuck:
                log.error("background task %s did not stop on close", task.get_name())

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def start_gateway_loops(loops: Supervisor, runtime: Runtime) -> None:
    """A gateway's background work: follow the other replicas' changes, export batch lines,
    record activity and, without Redis (or when asked), run a batch worker in this process."""
    follow_changes(loops, runtime)
    export_batch_lines(loops, runtime)
    loops.start("activity", lambda: runtime.activity.run(loops.stopping))
    in_process = runtime.settings.batch_worker
    if in_process is None:
        in_process = runtime.settings.redis_url is None  # nobody else would run the jobs
    if in_process:
        worker = batch_worker(runtime, name="gateway")
        loops.start("batch worker", lambda: worker.run(loops.stopping))


def export_batch_lines(loops: Supervisor, runtime: Runtime) -> None:
    """Export recent batch jobs' lines (`coe_batch_job_lines`) from a snapshot that a
    background task refreshes; gateways and workers both."""
    lines = runtime.metrics.export_batch_jobs(runtime.batch_jobs)
    loops.start("batch job lines", lambda: lines.run(loops.stopping))


def follow_changes(loops: Supervisor, runtime: Runtime) -> None:
    """Follow registry, key, config and rebuild notices from other replicas (and poll as
    a net for notices lost while the store was unreachable); gateways and workers both."""

    async def on_registry(_: str) -> None:
        if await runtime.registry.refresh():
            runtime.metrics.registry_version.set(runtime.registry.version)
        runtime.client.retain(runtime.registry.snapshot())  # removed experts' slots go

    async def on_keys(_: str) -> None:
        await runtime.api_keys.refresh()

    routing = runtime.routing
    every = runtime.settings.registry_poll_s
    follows: dict[str, Handler] = {
        keys.EXPERTS_CHANNEL: on_registry,
        keys.API_KEYS_CHANNEL: on_keys,
        keys.CONFIG_CHANNEL: routing.follow_stored,
        keys.ROUTERS_REBUILD_CHANNEL: routing.on_rebuild_notice,
    }
    for channel, handler in follows.items():
        loops.start(f"follow {channel}", _following(runtime, channel, handler))
    loops.start("poll registry", lambda: poll(every, lambda: on_registry(""), "registry"))
    loops.start("poll routing config", lambda: poll(every, routing.catch_up, "routing config"))


def _following(runtime: Runtime, channel: str, handler: Handler) -> Callable[[], Awaitable[None]]:
    return lambda: follow_channel(runtime.store, channel, handler)


def batch_worker(runtime: Runtime, name: str | None = None) -> BatchWorker:
    """A batch worker over this runtime's store and engine, with the process's settings."""
    settings = runtime.settings
    return BatchWorker(
        runtime.batch_jobs.work,
        lambda: runtime.engine,
        name=name,
        claim_idle_s=settings.batch_claim_idle_s,
        metrics=runtime.metrics,
        max_deliveries=settings.batch_max_deliveries,
        sweep_every_s=settings.batch_sweep_every_s,
    )
