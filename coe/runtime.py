"""The composition root: everything with state that a process needs — store, registry, expert
client, the pool services' published state, engine, metrics — built once and closed at exit.
The gateway, the batch worker and the CLI all start here; nothing here knows about the web,
and nothing here runs in the background (the fronts start their loops in `coe.supervisor`).
Pools themselves run in their device's pool service (`coe pool serve`), never here."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coe.batch import BatchJobs
from coe.config import Settings
from coe.dispatch import ExpertClient
from coe.dispatch.liveness import PoolStates
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig, load_config
from coe.lifecycle.live import LiveRouting, Swapped, bound_encoders, startup_config
from coe.lifecycle.stored_config import describe_source
from coe.observability import Metrics
from coe.observability.activity import Activity
from coe.pipeline import Engine, build_engine
from coe.security import ApiKeyStore
from coe.store import RedisOptions, keys, open_store
from coe.store.base import Store

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
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def engine(self) -> Engine:
        return self.routing.engine

    @property
    def config(self) -> CoeConfig:
        return self.routing.engine.config

    async def reload_config(self) -> Swapped:
        """Read this replica's experts.yaml, build it aside, swap it in and store it as the
        config of every replica; the old engine serves until then (and on any failure)."""
        return await self.routing.reload_from_file(Path(self.settings.experts_file))

    async def rebuild_routers(self) -> Swapped:
        """Set every router up again from its artefacts, aside, then on every replica."""
        return await self.routing.rebuild()

    async def close(self) -> None:
        """Close what `build_runtime` opened; the background loops (`coe.supervisor`) are
        closed first by the front that started them."""
        if self.pools is not None:
            await self.pools.close()
        await self.http.aclose()
        await self.store.close()


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
