"""The engine a process answers with, and the only ways it changes: a new engine is built
aside (every router set up) and swapped in with one assignment, so a request sees the old
routers or the new ones, never a mix; a build that fails leaves the old engine serving.

Replicas stay in step through the store: the routing config is stored per version
(`coe.lifecycle.stored_config`) and rebuilds are counted; notices carry both, and a poll
catches up on notices lost while the store was unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coe.dispatch import ExpertClient
from coe.errors import CoeError, StoreUnavailable
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig, load_config
from coe.lifecycle import stored_config
from coe.pipeline import Engine, build_engine
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)


def bound_encoders(encoders: Any, config: CoeConfig) -> Any:
    """The process's encoder cache with this config's default encoder (None stays None:
    the embedding extra is not installed)."""
    return None if encoders is None else encoders.bound(config.encoder)


@dataclass(frozen=True)
class Swapped:
    """What a reload or rebuild put in place."""

    engine: Engine
    generation: int  # engines this process has built, the one serving included
    config_version: int | None  # the stored config it serves (None: this process's own)
    rebuild: int | None = None  # the rebuild number every replica was told (rebuilds only)


class LiveRouting:
    def __init__(
        self,
        engine: Engine,
        *,
        store: Store,
        registry: ExpertRegistry,
        client: ExpertClient,
        base_dir: Path,
        replica_id: str,
        encoders: Any = None,
        config_version: int | None = None,
        rebuild_seen: int = 0,
    ):
        self.engine = engine
        self.store = store
        self.registry = registry
        self.client = client
        self.base_dir = base_dir
        self.replica_id = replica_id
        self.encoders = encoders
        self.generation = 1
        self.config_version = config_version
        self.rebuild_seen = rebuild_seen
        self.refused_version: int | None = None  # a stored version that did not build here
        self._lock = asyncio.Lock()  # one build at a time: the last swap is the newest

    async def build(self, config: CoeConfig) -> Engine:
        encoders = bound_encoders(self.encoders, config)
        return await build_engine(
            config, self.registry, self.client, self.store, self.base_dir, encoders=encoders
        )

    def _swap(self, engine: Engine, config_version: int | None) -> Swapped:
        self.engine = engine  # the one assignment requests see
        self.config_version = config_version
        self.generation += 1
        return Swapped(engine, self.generation, config_version)

    # -- asked of this replica (admin API) ------------------------------------------------
    async def rebuild(self) -> Swapped:
        """Rebuild every router from its artefacts, then have every other replica do it."""
        async with self._lock:
            engine = await self.build(self.engine.config)
            done = self._swap(engine, self.config_version)
            try:
                n = await self.store.incr(keys.ROUTERS_REBUILD)
                self.rebuild_seen = max(self.rebuild_seen, n)
                notice = json.dumps({"rebuild": n, "replica": self.replica_id})
                await self.store.publish(keys.ROUTERS_REBUILD_CHANNEL, notice)
            except StoreUnavailable as err:
                raise StoreUnavailable(
                    f"routers rebuilt on this replica (generation {done.generation}), but the "
                    f"other replicas could not be told: {err.message}"
                ) from err
        log.info(
            "routers rebuilt: generation %d, rebuild %d told to every replica", done.generation, n
        )
        return Swapped(done.engine, done.generation, done.config_version, rebuild=n)

    async def reload_from_file(self, path: Path) -> Swapped:
        """Read and validate `path`, build it here, then store it as the config every replica
        serves. A file that is invalid or does not build changes nothing anywhere."""
        config = await asyncio.to_thread(load_config, path)
        async with self._lock:
            engine = await self.build(config)
            source = stored_config.describe_source(path)
            try:
                version = await stored_config.publish(self.store, config, source, self.replica_id)
            except StoreUnavailable as err:
                raise StoreUnavailable(
                    f"{path} is valid and builds, but storing it for every replica failed "
                    f"(this replica keeps its config): {err.message}"
                ) from err
            done = self._swap(engine, version)
            self.refused_version = None
        log.info(
            "routing config version %s stored from %s: generation %d",
            version,
            path,
            done.generation,
        )
        return done

    # -- told by another replica (notices), or found by the poll ---------------------------
    async def follow_stored(self, _notice: str = "") -> None:
        """Serve the stored config when its version is not the one serving here."""
        version = await stored_config.current_version(self.store)
        if version is None or version in (self.config_version, self.refused_version):
            return
        async with self._lock:
            if version in (self.config_version, self.refused_version):
                return
            try:
                stored = await stored_config.read(self.store, version)
                engine = await self.build(stored.config)
            except StoreUnavailable:  # tried again on the next notice or poll
                raise
            except CoeError as err:
                self.refused_version = version
                log.error(
                    "routing config version %d refused, version %s keeps serving: %s",
                    version,
                    self.config_version,
                    err.message,
                )
                return
            done = self._swap(engine, version)
        log.info(
            "routing config version %d (stored by replica %s from %s) now serves: generation %d",
            version,
            stored.replica,
            stored.source,
            done.generation,
        )

    async def on_rebuild_notice(self, notice: str) -> None:
        try:
            told = json.loads(notice)
            n, sender = int(told["rebuild"]), str(told["replica"])
        except (ValueError, KeyError, TypeError):
            log.error("ignored a malformed router rebuild notice: %r", notice[:200])
            return
        if sender != self.replica_id:
            await self._rebuild_for(n, f"replica {sender}")

    async def catch_up(self) -> None:
        """The poll's safety net: a config version or a rebuild whose notice was lost."""
        await self.follow_stored()
        raw = await self.store.get(keys.ROUTERS_REBUILD)
        if raw is not None and int(raw) > self.rebuild_seen:
            await self._rebuild_for(int(raw), "the store (its notice was lost)")

    async def _rebuild_for(self, n: int, asked_by: str) -> None:
        async with self._lock:
            if n <= self.rebuild_seen:
                return
            self.rebuild_seen = n
            try:
                engine = await self.build(self.engine.config)
            except CoeError as err:
                log.error(
                    "routers not rebuilt (rebuild %d asked by %s), the previous ones keep "
                    "serving: %s",
                    n,
                    asked_by,
                    err.message,
                )
                return
            done = self._swap(engine, self.config_version)
        log.info(
            "routers rebuilt: generation %d (rebuild %d asked by %s)", done.generation, n, asked_by
        )


async def startup_config(
    store: Store,
    file_config: CoeConfig,
    source: str,
    replica_id: str,
    *,
    publish: bool,
    given: bool,
) -> tuple[CoeConfig, int | None]:
    """The config a process starts with, and its stored version. The stored config wins when
    there is one; a config `given` explicitly (`coe serve --config-from-file`, `coe up`)
    replaces it for every replica. With none stored, a process that `publish`es (a gateway)
    stores its file's; the first one to do so sets the config of every later one."""
    if given and publish:
        return file_config, await stored_config.publish(store, file_config, source, replica_id)
    version = await stored_config.current_version(store)
    if version is not None:
        try:
            stored = await stored_config.read(store, version)
        except StoreUnavailable:
            raise
        except CoeError as err:
            log.error("stored routing config unusable, serving %s: %s", source, err.message)
            if not publish:
                return file_config, None
            return file_config, await stored_config.publish(store, file_config, source, replica_id)
        differs = stored_config.to_document(stored.config) != stored_config.to_document(file_config)
        log.log(
            logging.WARNING if differs else logging.INFO,
            "serving the stored routing config version %d (%s)%s",
            version,
            stored.source,
            f"; {source} differs (POST /admin/reload or `coe serve --config-from-file` "
            "makes it every replica's)"
            if differs
            else "",
        )
        return stored.config, version
    if not publish:
        return file_config, None
    mine = await stored_config.publish(store, file_config, source, replica_id, only_if_absent=True)
    if mine is not None:
        return file_config, mine
    # another replica stored its config first: serve that one
    return await startup_config(store, file_config, source, replica_id, publish=True, given=False)
