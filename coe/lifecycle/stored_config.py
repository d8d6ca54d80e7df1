"""The routing config every replica serves, kept in the store: one validated document per
version, a pointer to the current version, and a notice when the pointer moves. Replicas
build their engine from it, so replicas whose local experts.yaml differ still route alike."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any

from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, parse_config
from coe.store import keys
from coe.store.base import Store

KEEP_REPLACED_S = 7 * 24 * 3600.0  # a replaced version stays readable this long, then expires


@dataclass(frozen=True)
class StoredConfig:
    version: int
    config: CoeConfig
    source: str  # where it was read: host and path of the file, or how it was given
    replica: str  # the replica that stored it


def describe_source(path: object) -> str:
    return f"{socket.gethostname()}:{path}"


def to_document(config: CoeConfig) -> dict[str, Any]:
    """The validated config as JSON; only the fields the file set, so defaults (and whether
    a pipeline set its own `k`) read back the same."""
    return config.model_dump(mode="json", exclude_unset=True)


async def current_version(store: Store) -> int | None:
    raw = await store.get(keys.CONFIG_VERSION)
    return int(raw) if raw is not None else None


async def read(store: Store, version: int) -> StoredConfig:
    """Stored version `version`, validated again here; a ConfigError when it is missing or
    no longer valid (a replica running other code than the one that stored it)."""
    raw = await store.get(keys.config_doc(version))
    if raw is None:
        raise ConfigError(f"stored config version {version} is missing from the store")
    try:
        doc = json.loads(raw)
        source = f"stored config version {version} ({doc['source']})"
        config = parse_config(doc["config"], source)
        return StoredConfig(version, config, str(doc["source"]), str(doc["replica"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"stored config version {version} is malformed: {err}") from None


async def publish(
    store: Store, config: CoeConfig, source: str, replica: str, only_if_absent: bool = False
) -> int | None:
    """Store `config` as a new version, point every replica at it and tell them. With
    `only_if_absent`, only when no version is stored yet (None: another replica was first)."""
    version = await store.incr(keys.CONFIG_SEQ)
    doc = {
        "version": version,
        "config": to_document(config),
        "source": source,
        "replica": replica,
        "at": time.time(),
    }
    await store.set(keys.config_doc(version), json.dumps(doc))
    if only_if_absent:
        if not await store.set_if_absent(keys.CONFIG_VERSION, str(version)):
            await store.delete(keys.config_doc(version))
            return None
    else:
        replaced = await current_version(store)
        await store.set(keys.CONFIG_VERSION, str(version))
        if replaced is not None and replaced != version:
            await store.expire(keys.config_doc(replaced), KEEP_REPLACED_S)
    await store.publish(keys.CONFIG_CHANNEL, str(version))
    return version
