"""The console's fixtures: a config routing by the expert a query names, on either store."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from coe.store.base import Store
from coe.store.embedded import EmbeddedStore
from tests.support.net import delete_prefix
from tests.support.redis import isolated_redis_store

REPO = Path(__file__).resolve().parents[2]
ROUTERS = Path(__file__).resolve().parent / "routers"
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def console_config(experts: dict[str, str], default: str) -> dict[str, Any]:
    """Experts by name -> base URL; `coe/auto` picks the expert the query names (else the
    default), `coe/plain` always the default."""
    return {
        "experts": [
            {"name": name, "model": f"{name}-model", "endpoints": [url], "description": name}
            for name, url in experts.items()
        ],
        "default_expert": default,
        "routers": {"mention": {"type": "mention"}},
        "pipelines": {
            "auto": {"routers": ["mention", "default"]},
            "plain": {"routers": ["default"]},
        },
        "routers_dirs": [str(REPO / "routers"), str(ROUTERS)],
    }


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the test Redis, emptied afterwards."""
    prefix = f"coe-test-console:{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_prefix(REDIS_URL, prefix)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings for the gateway's store: the embedded one, or Redis under a fresh prefix."""
    if request.param == "embedded":
        yield {}
        return
    redis_prefix = request.getfixturevalue("redis_prefix")
    yield {"redis_url": REDIS_URL, "store_prefix": redis_prefix}


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "embedded":
        embedded = EmbeddedStore()
        yield embedded
        await embedded.close()
        return
    async with isolated_redis_store(REDIS_URL, "console") as redis_store:
        yield redis_store
