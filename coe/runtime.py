"""The composition root: everything with state that a process needs — store, registry, expert
client, the pool services' published state, engine, metrics — built once and closed at exit.
The gateway, the batch worker and the CLI all start here; nothing here knows about the web.
Pools themselves run in their device's pool service (`coe pool serve`), never here."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coe.backoff import Backoff
from coe.batch import BatchJobs, BatchWorker
from coe.config import Settings
from coe.dispatch import ExpertClient
from coe.dispatch.liveness import PoolStates
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig, load_config
from coe.observability import Metrics
from coe.observability.activity import Activity
from coe.pipeline import Engine, build_engine
from coe.routing.live import LiveRouting, Swapped, bound_encoders, startup_config
from coe.routing.shared_config import describe_source
from coe.security import ApiKeyStore
from coe.store import RedisOptions, keys, open_store
from coe.store.base import Store
from coe.store.watch import follow_channel, poll

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    registry: ExpertRegistry
    http: httpx.AsyncClient
    client: ExpertClient
    routing: LiveRouting  # the engine serving now; replaced whole by reloads and rebuilds
    metrics: Metrics
    api_keys: ApiKeyStore
    admin_token: str
    base_dir: Path
    batch_jobs: BatchJobs
    activity: Activity  # routing decisions and recent requests, for the console
    encoders: Any = None
    pools: PoolStates | None = None  # what each pool service publishes; no pool runs here
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def engine(self) -> Engine:
        return self.routing.engine

    @property
    def config(self) -> CoeConfig:
        return self.routing.engine.config

    def start_background(self) -> None:
        """A gateway's background work: follow the other replicas' changes and, without
        Redis (or when asked), run a batch worker in this process."""
        self.follow_changes()
        self.export_batch_lines()
        self.tasks.append(asyncio.create_task(self.activity.run(self.stopping), name="activity"))
        in_process = self.settings.batch_worker
        if in_process is None:
            in_process = self.settings.redis_url is None  # nobody else would run the jobs
        if in_process:
            worker = batch_worker(self, name="gateway")
            stop = self.stopping
            self.tasks.append(
                asyncio.create_task(supervise("batch worker", lambda: worker.run(stop)))
            )

    def export_batch_lines(self) -> None:
        """Export recent batch jobs' lines (`coe_batch_job_lines`) from a snapshot that a
        background task refreshes; gateways and workers both."""
        lines = self.metrics.export_batch_jobs(self.batch_jobs)
        self.tasks.append(
            asyncio.create_task(supervise("batch job lines", lambda: lines.run(self.stopping)))
        )

    def follow_changes(self) -> None:
        """Follow registry, key, config and rebuild notices from other replicas (and poll as
        a net for notices lost while the store was unreachable); gateways and workers both."""

        async def on_registry(_: str) -> None:
            if await self.registry.refresh():
                self.metrics.registry_version.set(self.registry.version)
            self.client.retain(self.registry.snapshot())  # removed experts' slots go

        async def on_keys(_: str) -> None:
            await self.api_keys.refresh()

        routing = self.routing
        every = self.settings.registry_poll_s
        self.tasks += [
            asyncio.create_task(follow_channel(self.store, keys.EXPERTS_CHANNEL, on_registry)),
            asyncio.create_task(follow_channel(self.store, keys.API_KEYS_CHANNEL, on_keys)),
            asyncio.create_task(
                follow_channel(self.store, keys.CONFIG_CHANNEL, routing.follow_stored)
            ),
            asyncio.create_task(
                follow_channel(self.store, keys.ROUTERS_REBUILD_CHANNEL, routing.on_rebuild_notice)
            ),
            asyncio.create_task(poll(every, lambda: on_registry(""), "registry")),
            asyncio.create_task(poll(every, routing.catch_up, "routing config")),
        ]

    async def reload_config(self) -> Swapped:
        """Read this replica's experts.yaml, build it aside, swap it in and store it as the
        config of every replica; the old engine serves until then (and on any failure)."""
        return await self.routing.reload_from_file(Path(self.settings.experts_file))

    async def rebuild_routers(self) -> Swapped:
        """Set every router up again from its artefacts, aside, then on every replica."""
        return await self.routing.rebuild()

    async def close(self) -> None:
        """Stop the background work (asked by event first, then cancelled; whatever has not
        stopped within `CLOSE_GRACE_S` is left behind with an error, never waited for)."""
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=CLOSE_GRACE_S)
            for task in stuck:
                log.error("background task %s did not stop on close", task.get_name())
        if self.pools is not None:
            await self.pools.close()
        await self.http.aclose()
        await self.store.close()


CLOSE_GRACE_S = 10.0


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


def _encoder_cache(settings: Settings) -> object | None:
    """The shared sentence-transformers cache, when the embedding extra is installed."""
    try:
        from coe.routing.encoders import EncoderCache
    except ImportError:
        return None
    return EncoderCache(
        max_queue=settings.encoder_max_queue, query_cache_size=settings.encoder_cache_size
    )


def _admin_token(settings: Settings) -> str:
    token = settings.checked_admin_token()
    if token is None:
        token = secrets.token_urlsafe(24)
        log.warning("dev mode: no COE_ADMIN_TOKEN set; this run's admin token is %s", token)
    return token


async def build_runtime(
    settings: Settings,
    config: CoeConfig | None = None,
    metrics: Metrics | None = None,
    serve_admin: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
    routers: bool = True,
) -> Runtime:
    """`serve_admin=False` for processes with no admin API (workers, the CLI). `transport`
    replaces the network for expert calls (in-process tests: `httpx.ASGITransport`).
    `routers=False` builds an engine that only answers plans routed elsewhere (no router,
    no encoder is loaded): what a batch stage that generates needs."""
    admin_token = _admin_token(settings) if serve_admin else ""
    config_path = Path(settings.experts_file)
    given = config is not None
    if config is None:
        config = await asyncio.to_thread(load_config, config_path)
    base_dir = Path(os.path.abspath(config_path)).parent  # noqa: ASYNC240 - start-up only
    metrics = metrics or Metrics()
    store = open_store(
        settings.redis_url,
        prefix=settings.store_prefix,
        options=RedisOptions.from_settings(settings),
    )
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        timeout=httpx.Timeout(settings.request_timeout_s),
        transport=transport,
    )
    pools: PoolStates | None = None
    replica_id = uuid.uuid4().hex
    try:
        # The stored config (every replica's) wins over the file; see docs/architecture.md.
        config, config_version = await startup_config(
            store,
            config,
            describe_source(config_path),
            replica_id,
            publish=serve_admin,
            given=given,
        )
        registry = ExpertRegistry(store)
        await registry.seed(config)
        api_keys = ApiKeyStore(
            store,
            cache_size=settings.api_key_cache_size,
            wipe_grace_s=settings.api_key_wipe_grace_s,
        )
        await api_keys.refresh()
        pools = PoolStates(http, config)
        await pools.start()
        client = ExpertClient(http, liveness=pools, observer=metrics)
        encoders = _encoder_cache(settings) if routers else None
        engine = (
            await build_engine(
                config, registry, client, store, base_dir, encoders=bound_encoders(encoders, config)
            )
            if routers
            else Engine(config, registry, client, {})
        )
        rebuilds = await store.get(keys.ROUTERS_REBUILD)
    except BaseException:
        if pools is not None:
            await pools.close()
        await http.aclose()
        await store.close()
        raise
    metrics.registry_version.set(registry.version)
    metrics.store_circuit_open.set_function(lambda: float(store.circuit_open()))
    log.info(
        "coe ready: %d experts, pipelines %s, store %s",
        len(registry.snapshot()),
        ", ".join(engine.pipelines),
        "redis" if settings.redis_url else "embedded",
    )
    routing = LiveRouting(
        engine,
        store=store,
        registry=registry,
        client=client,
        base_dir=base_dir,
        replica_id=replica_id,
        encoders=encoders,
        config_version=config_version,
        rebuild_seen=int(rebuilds or 0),
    )
    return Runtime(
        settings=settings,
        store=store,
        registry=registry,
        http=http,
        client=client,
        routing=routing,
        metrics=metrics,
        api_keys=api_keys,
        admin_token=admin_token,
        base_dir=base_dir,
        batch_jobs=BatchJobs.from_settings(store, settings),
        activity=Activity(store),
        encoders=encoders,
        pools=pools,
        replica_id=replica_id,
    )


def check_plugins(config: CoeConfig, base_dir: Path) -> list[str]:
    """Every router and pool the config names, resolved to a loaded plug-in with valid params,
    with no I/O beyond importing the plug-ins; what `coe check-config` checks after the schema.
    Returns one line per plug-in checked; the first problem is a ConfigError."""
    from coe.aggregation import StrategyRegistry, pipeline_strategies
    from coe.pool.registry import ControllerRegistry
    from coe.routing.registry import RouterRegistry, router_specs

    StrategyRegistry.load().check(pipeline_strategies(config))
    if config.encoder is not None:
        from coe.errors import ConfigError
        from coe.routing.encoder_backends import EncoderKinds

        try:
            EncoderKinds.load().parse(config.encoder)
        except ConfigError as err:
            raise ConfigError(f"encoder: {err.message}") from None
    routers = RouterRegistry.load(config.routers_dirs, base_dir)
    checked = []
    for name, (type_name, params) in router_specs(config).items():
        router_cls, _ = routers.resolve(name, type_name, params)
        checked.append(f"router {name}: {type_name} ({router_cls.__module__})")
    if config.pools:
        controllers = ControllerRegistry.load(config.controllers_dirs, base_dir)
        for name, spec in config.pools.items():
            controller_cls, _ = controllers.resolve(name, spec)
            checked.append(f"pool {name}: {spec.controller} ({controller_cls.__module__})")
    return checked
