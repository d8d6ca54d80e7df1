"""Shared fixtures: real Redis (isolated prefix), a real vLLM CPU expert, the data slices."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coe.routing.encoders import EncoderCache
from coe.store.redis_store import RedisStore
from tests.support.net import free_port
from tests.support.redis import isolated_redis_store
from tests.tiers import SpawnGuard, fast_tier, mark_items

pytest_plugins = ["tests.support.redis_server"]  # `redis_server`: a Redis of the test's own

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks from what each test uses (tests/tiers.py), before `-m` selects. Under xdist
    (`--dist loadgroup`) a file's tests run on one worker, in order, with its module fixtures
    built once, as in a serial run; the tests that share one vLLM server or one local Ray
    run on one worker."""
    mark_items(items)
    for item in items:
        heavy = item.get_closest_marker("vllm") or item.get_closest_marker("ray")
        module = item.nodeid.split("::")[0].replace("/", ".")
        item.add_marker(pytest.mark.xdist_group("heavy" if heavy else module))


def pytest_collection_finish(session: pytest.Session) -> None:
    """In a run that leaves out `process` tests (`make test-fast`), starting a process fails
    the test that did it."""
    if fast_tier(session.config):
        guard = SpawnGuard()
        guard.install()
        session.config.pluginmanager.register(guard, "coe-spawn-guard")
        session.config.add_cleanup(guard.uninstall)


TEST_DATA = Path(__file__).resolve().parent / "data"
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Small slices of the shared routing data sets (see tests/data/README.md)."""
    return TEST_DATA


@pytest.fixture(scope="session")
def encoders() -> EncoderCache:
    """The real MiniLM encoder, loaded once per session; the memo makes each data slice
    encode once per session, not once per router built."""
    enc = EncoderCache(memo_size=50_000)
    enc.model()
    return enc


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    """A RedisStore on the real server under a fresh key prefix, emptied afterwards."""
    async with isolated_redis_store(REDIS_URL) as store:
        yield store


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray (two CPUs, no dashboard) for the whole session; the Ray batch engine
    uses the Ray it finds running."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=512 * 1024 * 1024,
    )
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class LiveExpert:
    base_url: str
    model: str


@pytest.fixture(scope="session")
def vllm_expert() -> Iterator[LiveExpert]:
    """One real vLLM CPU server with SmolLM2-135M-Instruct for the whole session.

    Set COE_TEST_VLLM_URL (and COE_TEST_VLLM_MODEL) to reuse a server already running.
    """
    url = os.environ.get("COE_TEST_VLLM_URL")
    if url:
        yield LiveExpert(url.rstrip("/"), os.environ.get("COE_TEST_VLLM_MODEL", "smollm2"))
        return
    from coe.local.model import ensure_smollm2
    from coe.local.vllm_server import VllmServer

    log_path = Path(os.environ.get("COE_TEST_LOG_DIR", "/tmp")) / "coe-test-vllm.log"
    server = VllmServer(ensure_smollm2(), free_port(), "smollm2", cpu_core=0, log_path=log_path)
    server.start()
    try:
        asyncio.run(server.wait_healthy(timeout_s=400))
        yield LiveExpert(server.base_url, "smollm2")
    finally:
        server.stop()
