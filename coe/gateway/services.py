"""Everything with state that the gateway needs, built once per process and closed at exit."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from coe.config import Settings
from coe.dispatch import ExpertClient
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig, load_config
from coe.pipeline import Engine, build_engine
from coe.store import open_store
from coe.store.base import Store

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    config: CoeConfig
    store: Store
    registry: ExpertRegistry
    http: httpx.AsyncClient
    engine: Engine

    async def close(self) -> None:
        await self.http.aclose()
        await self.store.close()


def _encoder_cache() -> object | None:
    """The shared sentence-transformers cache, when the embedding extra is installed."""
    try:
        from coe.routing.encoders import EncoderCache
    except ImportError:
        return None
    return EncoderCache()


async def build_services(settings: Settings, config: CoeConfig | None = None) -> Services:
    config_path = Path(settings.experts_file)
    if config is None:
        config = load_config(config_path)
    base_dir = Path(os.path.abspath(config_path)).parent  # noqa: ASYNC240 - start-up only
    store = open_store(settings.redis_url, prefix=settings.store_prefix)
    try:
        registry = ExpertRegistry(store)
        await registry.seed(config)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        http = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(settings.request_timeout_s))
        client = ExpertClient(http)
        engine = await build_engine(
            config, registry, client, store, base_dir, encoders=_encoder_cache()
        )
    except BaseException:
        await store.close()
        raise
    log.info(
        "coe ready: %d experts, pipelines %s, store %s",
        len(registry.snapshot()),
        ", ".join(engine.pipelines),
        "redis" if settings.redis_url else "embedded",
    )
    return Services(settings, config, store, registry, http, engine)
