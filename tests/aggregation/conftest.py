"""Gateways for the aggregation tests: fake experts whose answers the test sets, a real one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from tests.support.server import ServedApp

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ROUTERS_DIRS = [str(REPO / "routers"), str(HERE / "plugins")]


def fixed(scores: dict[str, float], k: int, aggregator: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"scores": scores, "k": k}
    if aggregator:
        params["aggregator"] = aggregator
    return {"type": "test_fixed_scores", "params": params}


@pytest.fixture(scope="module")
def serve() -> Iterator[Any]:
    """Start a gateway for a config dict; every one started is stopped with the module."""
    servers: list[ServedApp] = []

    def start(config: dict[str, Any]) -> str:
        config = {**config, "routers_dirs": ROUTERS_DIRS}
        app = create_app(Settings(dev_mode=True), CoeConfig.model_validate(config))
        server = ServedApp(app).start()
        servers.append(server)
        return server.base_url

    yield start
    for server in servers:
        server.stop()
