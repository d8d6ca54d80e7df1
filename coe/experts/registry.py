"""The live set of experts: seeded from experts.yaml, kept in the store, versioned.

Reads come from an in-memory snapshot so a request never waits on the store;
`refresh()` reloads it when the stored version moved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from coe.errors import NotFound
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.store import keys
from coe.store.base import Store

log = logging.getLogger(__name__)


class ExpertRegistry:
    def __init__(self, store: Store):
        self.store = store
        self._snapshot: dict[str, ExpertSpec] = {}
        self.version = 0

    async def seed(self, config: CoeConfig, overwrite: bool = False) -> None:
        """Write the file's experts unless the store already has a registry."""
        existing = await self.store.get(keys.EXPERTS_VERSION)
        if existing is None or overwrite:
            await self.store.delete(keys.EXPERTS)
            await self.store.hset(
                keys.EXPERTS, {e.name: e.model_dump_json() for e in config.experts}
            )
            await self._bump()
        await self.refresh(force=True)

    async def refresh(self, force: bool = False) -> bool:
        raw_version = await self.store.get(keys.EXPERTS_VERSION)
        version = int(raw_version or 0)
        if not force and version == self.version:
            return False
        raw = await self.store.hgetall(keys.EXPERTS)
        self._snapshot = {name: _stored(value) for name, value in sorted(raw.items())}
        self.version = version
        return True

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
