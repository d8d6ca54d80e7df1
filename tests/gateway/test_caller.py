"""Who asks reaches the router: through the in-process gateway, the authenticated API key's id
and the request's `coe.conversation` arrive in `RouteContext.caller`, a bad conversation is a
400 in OpenAI's shape, and the router's estimates and probability come back in `coe`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coe.config import Settings
from coe.experts.schema import CoeConfig
from tests.support.asgi import InProcessUpstream, asgi_client, route_to, running_gateway

REPO = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-for-tests-0123456789"

RECORDER = """
from coe.routing import Estimate, RouteDecision, Router, ranked_from_scores

class Recorder(Router):
    type_name = "recorder"

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = []

    async def route(self, query, ctx):
        self.seen.append(ctx)
        return RouteDecision(
            ranked_from_scores({"alpha": 0.75}), self.name, "recorded",
            estimates=(Estimate("alpha", 0.6, uncertainty=0.1),), probability=0.75,
        )
"""


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    (tmp_path / "recorder.py").write_text(RECORDER)
    upstream = InProcessUpstream("alpha")
    config = CoeConfig.model_validate(
        {
            "experts": [{"name": "alpha", "model": "m", "endpoints": [upstream.base_url]}],
            "default_expert": "alpha",
            "routers": {"rec": {"type": "recorder"}},
            "pipelines": {"auto": {"routers": ["rec"]}},
            "routers_dirs": [str(REPO / "routers"), str(tmp_path)],
        }
    )
    settings = Settings(
        admin_token=TOKEN,  # type: ignore[arg-type]
        require_api_key=True,
        batch_chunk=2,
        batch_claim_idle_s=0.5,
    )
    async with running_gateway(settings, config, route_to(upstream)) as gateway:
        yield gateway


def seen(app: FastAPI) -> list[Any]:
    return list(app.state.runtime.engine.routers["rec"].seen)


async def client_of(app: FastAPI) -> tuple[httpx.AsyncClient, str]:
    """A client holding a fresh API key, and that key's id."""
    record, secret = await app.state.runtime.api_keys.create("tests", 600)
    return asgi_client(app, headers={"authorization": f"Bearer {secret}"}), record.id


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "coe/auto", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_the_key_id_and_conversation_reach_the_router(app: FastAPI) -> None:
    client, key_id = await client_of(app)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(coe={"conversation": "c-1"}))
        assert resp.status_code == 200, resp.text
        explained = await client.post("/v1/route", json={"query": "hi"})
        assert explained.status_code == 200, explained.text
    chatted, routed = seen(app)
    assert (chatted.caller.key_id, chatted.caller.conversation) == (key_id, "c-1")
    assert (routed.caller.key_id, routed.caller.conversation) == (key_id, None)
    assert chatted.needs.tokens == 1
    # the decision echoed in `coe` carries the router's estimates and probability
    decision = resp.json()["coe"]["decision"]
    assert decision["estimates"] == [
        {"expert": "alpha", "quality": 0.6, "uncertainty": 0.1, "cost": None}
    ]
    assert decision["probability"] == 0.75
    assert explained.json()["probability"] == 0.75


@pytest.mark.parametrize("bad", ["two words", "x" * 129, "", 12, "a/b"])
async def test_a_bad_conversation_is_a_400_naming_it(app: FastAPI, bad: object) -> None:
    client, _ = await client_of(app)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(coe={"conversation": bad}))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "coe.conversation"
    assert error["message"].startswith("Invalid request: coe.conversation: ")
    assert not seen(app)


async def test_batch_lines_carry_the_jobs_key_and_their_own_conversation(app: FastAPI) -> None:
    client, key_id = await client_of(app)
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate([chat(coe={"conversation": "c-0"}), chat(), chat()])
    ]
    upload = "\n".join(json.dumps(line) for line in lines).encode()
    async with client:
        made = await client.post(
            "/v1/files", files={"file": ("in.jsonl", upload)}, data={"purpose": "batch"}
        )
        assert made.status_code == 200, made.text
        job = await client.post(
            "/v1/batches",
            json={
                "input_file_id": made.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert job.status_code == 200, job.text
        deadline = time.monotonic() + 20
        while (await client.get(f"/v1/batches/{job.json()['id']}")).json()["status"] != (
            "completed"
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    callers = sorted((c.caller.key_id, c.caller.conversation or "") for c in seen(app))
    assert callers == [(key_id, ""), (key_id, ""), (key_id, "c-0")]
