"""A gateway whose in-process batch worker is mid-unit still shuts down, promptly."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.testing import Fault
from tests.support.asgi import InProcessUpstream, asgi_client, route_to, running_gateway

REPO = Path(__file__).resolve().parents[2]


async def test_closing_mid_unit_does_not_wait_for_the_unit() -> None:
    slow = InProcessUpstream("e0")
    slow.fault = Fault(delay_s=30)  # every expert call outlives the shutdown
    config = CoeConfig.model_validate(
        {
            "experts": [{"name": "e0", "model": "m", "endpoints": [slow.base_url]}],
            "default_expert": "e0",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )
    settings = Settings(dev_mode=True, batch_claim_idle_s=1)
    lines = [
        {
            "custom_id": f"q{i}",
            "body": {"model": "e0", "messages": [{"role": "user", "content": "x"}]},
        }
        for i in range(4)
    ]
    async with running_gateway(settings, config, route_to(slow)) as app:
        async with asgi_client(app) as client:
            content = "\n".join(json.dumps(line) for line in lines)
            r = await client.post("/v1/batches", files={"file": ("in.jsonl", content)})
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 10
            while slow.state.inflight == 0:  # the worker is inside a unit, waiting on e0
                assert time.monotonic() < deadline, "the worker never called the expert"
                await asyncio.sleep(0.05)
        started = time.monotonic()  # leaving the block closes the gateway and its worker
    assert time.monotonic() - started < 12  # the runtime's close gives up after its grace
