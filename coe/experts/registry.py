"""The live set of experts: seeded from experts.yaml, kept in the store, versioned.

Reads come from an in-memory snapshot so a request never waits on the store;
`refresh()` reloads it when the stored version moved. A store that lost the registry
(Redis restarted without persistence, flushed, evicted) never empties the snapshot: one
replica writes it back (see `refresh`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping

from coe.errors import NotFound
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)

RESEED_LOCK_TTL_S = 10.0  # a replica that dies while restoring blocks the others this long


class ExpertRegistry:
    def __init__(self, store: Store):
        self.store = store
        self._snapshot: dict[str, ExpertSpec] = {}
        self._config: CoeConfig | None = None  # what to restore when there is no snapshot
        self.version = 0
        self.restored = 0  # how many times this replica wrote a lost registry back

    async def seed(self, config: CoeConfig, overwrite: bool = False) -> None:
        """Write the file's experts unless the store already has a registry."""
        self._config = config
        existing = await self.store.get(keys.EXPERTS_VERSION)
        if existing is None or overwrite:
            await self.store.delete(keys.EXPERTS)
            await self.store.hset(
                keys.EXPERTS, {e.name: e.model_dump_json() for e in config.experts}
            )
            await self._bump()
        await self.refresh(force=True)

    async def refresh(self, force: bool = False) -> bool:
        """Reload the snapshot when the stored version moved; True when it changed.

        The store is the source of truth while it holds a registry, even one with a lower
        version than ours (Redis restarted empty and an operator wrote an expert). A registry
        that is gone (no version, or no experts) is written back instead, by whichever
        replica takes the reseed lock first; the others keep their snapshot and pick up the
        restored version from its notice or their next poll."""
        raw_version = await self.store.get(keys.EXPERTS_VERSION)
        if not force and raw_version is not None and int(raw_version) == self.version:
            return False
        raw = await self.store.hgetall(keys.EXPERTS)
        if raw_version is None or not raw:
            if self._snapshot or self._config is not None:
                return await self._restore()
            return self._adopt(raw, int(raw_version or 0))
        version = int(raw_version)
        if version < self.version:
            log.warning(
                "expert registry version went back from %d to %d (Redis lost its data and "
                "was written to since?); taking the store's %d experts",
                self.version,
                version,
                len(raw),
            )
        return self._adopt(raw, version)

    def _adopt(self, raw: Mapping[str, str], version: int) -> bool:
        snapshot = {name: _stored(value) for name, value in sorted(raw.items())}
        changed = snapshot != self._snapshot or version != self.version
        self._snapshot, self.version = snapshot, version
        return changed

    async def _restore(self) -> bool:
        token = uuid.uuid4().hex
        if not await self.store.set_if_absent(
            keys.EXPERTS_RESEED_LOCK, token, ttl_s=RESEED_LOCK_TTL_S
        ):
            return False  # another replica is restoring it
        try:
            # Checked again under the lock: another replica may have restored it already.
            raw_version = await self.store.get(keys.EXPERTS_VERSION)
            raw = await self.store.hgetall(keys.EXPERTS)
            if raw_version is not None and raw:
                return self._adopt(raw, int(raw_version))
            if raw:  # only the version was lost: the experts stay as they are
                source = "the store's experts (its version key was missing)"
            elif self._snapshot:
                raw = {name: e.model_dump_json() for name, e in self._snapshot.items()}
                source = "this replica's last snapshot"
            else:
                assert self._config is not None
                raw = {e.name: e.model_dump_json() for e in self._config.experts}
                source = "the experts file"
            await self.store.hset(keys.EXPERTS, dict(raw))
            # Above every version a replica may have seen, so none mistakes it for old.
            version = max(self.version, int(raw_version or 0)) + 1
            await self.store.set(keys.EXPERTS_VERSION, str(version))
            await self.store.publish(keys.EXPERTS_CHANNEL, str(version))
            self.restored += 1
            log.warning(
                "expert registry was missing from the store (Redis lost its data?); "
                "restored %d experts from %s as version %d",
                len(raw),
                source,
                version,
            )
            return self._adopt(raw, version)
        finally:
            if await self.store.get(keys.EXPERTS_RESEED_LOCK) == token:
                await self.store.delete(keys.EXPERTS_RESEED_LOCK)

    def snapshot(self) -> Mapping[str, ExpertSpec]:
        return self._snapshot

    def get(self, name: str) -> ExpertSpec:
        try:
            return self._snapshot[name]
        except KeyError:
            raise NotFound(f"no expert named {name!r}") from None

    async def upsert(self, expert: ExpertSpec) -> None:
        await self.store.hset(keys.EXPERTS, {expert.name: expert.model_dump_json()})
        await self._bump()
        await self.refresh(force=True)

    async def remove(self, name: str) -> None:
        if not await self.store.hdel(keys.EXPERTS, name):
            raise NotFound(f"no expert named {name!r}")
        await self._bump()
        await self.refresh(force=True)

    async def _bump(self) -> None:
        version = await self.store.incr(keys.EXPERTS_VERSION)
        await self.store.publish(keys.EXPERTS_CHANNEL, str(version))


def _stored(value: str) -> ExpertSpec:
    data = json.loads(value)
    # Registries written before the `categories:` table became the only category map
    # still carry a per-expert list; nothing reads it, so it is dropped, not refused.
    data.pop("categories", None)
    return ExpertSpec.model_validate(data)
