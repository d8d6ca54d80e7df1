"""Per-request routing policy over real HTTP: `extra_body={"coe": {...}}` changes which expert
answers, is echoed in `coe.policy` (JSON, streams and /v1/route) and never reaches an expert;
bad policies are 400s naming the field."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.testing import FakeUpstream, Fault
from tests.support.asgi import GATEWAY_URL, InProcessUpstream, route_to, running_gateway
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]
COSTS = {"alpha": 5.0, "beta": 1.0, "gamma": 2.0}  # alpha is the default expert


def policy_config(urls: dict[str, str]) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {
                    "name": name,
                    "model": f"{name}-m",
                    "endpoints": [urls[name]],
                    "cost": cost,
                    "limits": {"timeout_s": 5},
                }
                for name, cost in COSTS.items()
            ],
            "default_expert": "alpha",
            "routers": {
                "first": {"type": "default"},  # alpha, then beta, then gamma
                "ranked": {
                    "type": "test_fixed_scores",
                    "params": {"scores": {"gamma": 0.6, "beta": 0.3, "alpha": 0.1}},
                },
            },
            "pipelines": {
                "auto": {"routers": ["first"]},
                "cheap": {"routers": ["ranked"]},
                "pair": {"routers": ["first"], "k": 2},
            },
            "routers_dirs": [str(REPO / "routers"), str(REPO / "tests/aggregation/plugins")],
        }
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeUpstream]]:
    started = {name: FakeUpstream(name).start() for name in COSTS}
    yield started
    for s in started.values():
        s.stop()


@pytest.fixture
def ups(servers: dict[str, FakeUpstream]) -> dict[str, FakeUpstream]:
    for s in servers.values():
        s.fault = Fault()
        s.state.reply = None
        s.state.bodies.clear()
    return servers


@pytest.fixture(scope="module")
def gateway(servers: dict[str, FakeUpstream]) -> Iterator[str]:
    config = policy_config({name: s.base_url for name, s in servers.items()})
    settings = Settings(max_body_bytes=64 * 1024, max_messages=8, dev_mode=True)
    server = ServedApp(create_app(settings, config)).start()
    yield server.base_url
    server.stop()


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as c:
        yield c


def chat(text: str, model: str = "coe/auto", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def asked(ups: dict[str, FakeUpstream], text: str) -> list[str]:
    """The experts whose upstream received `text` as the user's question."""
    return [
        name
        for name, s in ups.items()
        if any(b["messages"][-1].get("content") == text for b in s.state.bodies)
    ]


def never_saw_policy(ups: dict[str, FakeUpstream]) -> bool:
    return all("coe" not in b for s in ups.values() for b in s.state.bodies)


def test_openai_client_extra_body_picks_the_expert(
    gateway: str, ups: dict[str, FakeUpstream]
) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="coe/auto",
        messages=[{"role": "user", "content": "who answers?"}],
        extra_body={"coe": {"deny": ["alpha"], "max_cost": 3}},
    )
    out = raw.parse()
    assert raw.headers["x-coe-expert"] == "beta" and out.model == "beta"
    assert out.choices[0].message.content == "[beta] who answers?"
    assert out.model_extra is not None
    assert out.model_extra["coe"]["policy"] == {
        "deny": ["alpha"],
        "max_cost": 3,
        "excluded": {"alpha": "denied"},
    }
    assert asked(ups, "who answers?") == ["beta"] and never_saw_policy(ups)


@pytest.mark.parametrize(
    ("policy", "expert"),
    [
        (None, "alpha"),
        ({"deny": ["alpha"]}, "beta"),
        ({"allow": ["gamma"]}, "gamma"),
        ({"allow": ["alpha", "gamma"], "deny": ["alpha"]}, "gamma"),  # deny wins
        ({"max_cost": 1.5}, "beta"),
        ({"max_cost": 2}, "beta"),  # alpha out, beta first among the rest
        ({"pipeline": "cheap"}, "gamma"),
        ({"pipeline": "coe/cheap", "max_cost": 1.5}, "beta"),
        ({"pipeline": "pair", "k": 1}, "alpha"),  # the policy's k beats the pipeline's
    ],
)
def test_each_option_changes_who_answers(
    http: httpx.Client,
    ups: dict[str, FakeUpstream],
    policy: dict[str, Any] | None,
    expert: str,
) -> None:
    body = chat("pick one") if policy is None else chat("pick one", coe=policy)
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-coe-expert"] == expert
    meta = r.json()["coe"]
    assert meta["expert"] == expert and meta["decision"]["chosen"] == [expert]
    if policy is None:
        assert meta["policy"] is None
    else:
        assert {k: meta["policy"][k] for k in policy} == policy
    assert asked(ups, "pick one") == [expert] and never_saw_policy(ups)


def test_k_fans_out_to_the_best_experts_within_the_policy(
    http: httpx.Client, ups: dict[str, FakeUpstream]
) -> None:
    for s in ups.values():
        s.state.reply = "42"  # answers agree: no aggregator call
    r = http.post("/v1/chat/completions", json=chat("how many?", coe={"k": 2, "deny": ["beta"]}))
    assert r.status_code == 200, r.text
    assert r.headers["x-coe-expert"] == "alpha,gamma"
    meta = r.json()["coe"]
    assert meta["decision"]["k"] == 2 and meta["experts"] == ["alpha", "gamma"]
    assert "k=2 (request policy)" in meta["reason"]
    assert asked(ups, "how many?") == ["alpha", "gamma"] and never_saw_policy(ups)


def test_stream_echoes_the_policy_in_its_first_chunk(
    http: httpx.Client, ups: dict[str, FakeUpstream]
) -> None:
    body = chat("stream it", stream=True, coe={"allow": ["gamma", "beta"]})
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["x-coe-expert"] == "beta"
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    first = json.loads(lines[0])
    assert first["coe"]["policy"] == {
        "allow": ["gamma", "beta"],
        "excluded": {"alpha": "not allowed"},
    }
    assert asked(ups, "stream it") == ["beta"] and never_saw_policy(ups)


def test_a_named_expert_obeys_the_policy_or_is_refused(
    http: httpx.Client, ups: dict[str, FakeUpstream]
) -> None:
    r = http.post("/v1/chat/completions", json=chat("direct", "gamma", coe={"max_cost": 2}))
    assert r.status_code == 200 and r.headers["x-coe-expert"] == "gamma"
    r = http.post("/v1/chat/completions", json=chat("direct", "alpha", coe={"max_cost": 2}))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "no_expert_within_policy" and err["param"] == "coe.max_cost"
    assert "alpha" in err["message"] and "cost 5 exceeds max_cost 2" in err["message"]
    assert asked(ups, "direct") == ["gamma"]


@pytest.mark.parametrize(
    ("model", "policy", "param", "code", "needle"),
    [
        ("coe/auto", {"k": 0}, "coe.k", None, "greater than or equal to 1"),
        ("coe/auto", {"k": "2"}, "coe.k", None, "valid integer"),
        ("coe/auto", {"k": 4}, "coe.k", "k_exceeds_experts", "only 3 expert(s)"),
        ("coe/auto", {"k": 3, "max_cost": 2}, "coe.k", "k_exceeds_experts", "beta, gamma"),
        ("coe/auto", {"colour": "red"}, "coe.colour", None, "Extra inputs"),
        ("coe/auto", "cheap please", "coe", None, "valid dictionary"),
        ("coe/auto", {"max_cost": -1}, "coe.max_cost", None, "greater than or equal to 0"),
        ("coe/auto", {"allow": ["nobody"]}, "coe.allow", "unknown_expert", "nobody"),
        ("coe/auto", {"deny": ["alpha", "ghost"]}, "coe.deny", "unknown_expert", "ghost"),
        ("coe/auto", {"max_cost": 0.5}, "coe.max_cost", "no_expert_within_policy", "beta"),
        ("coe/auto", {"deny": list(COSTS)}, "coe.deny", "no_expert_within_policy", "denied"),
        ("coe/auto", {"pipeline": "nope"}, "coe.pipeline", "unknown_pipeline", "auto, cheap"),
        ("beta", {"pipeline": "cheap"}, "coe.pipeline", None, "names expert 'beta'"),
        ("beta", {"k": 2}, "coe.k", None, "names one expert"),
    ],
)
def test_bad_policies_are_400s_naming_the_field(
    http: httpx.Client,
    ups: dict[str, FakeUpstream],
    model: str,
    policy: Any,
    param: str,
    code: str | None,
    needle: str,
) -> None:
    r = http.post("/v1/chat/completions", json=chat("refused", model, coe=policy))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param and err["code"] == code and needle in err["message"]
    route = http.post("/v1/route", json={"model": model, "query": "refused", "coe": policy})
    assert route.status_code == 400 and route.json()["error"]["param"] == param
    assert asked(ups, "refused") == []


def test_route_explains_what_the_same_policy_would_do(
    http: httpx.Client, ups: dict[str, FakeUpstream]
) -> None:
    policy = {"pipeline": "cheap", "deny": ["gamma"], "k": 2}
    r = http.post("/v1/route", json={"query": "explain", "coe": policy})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["pipeline"] == "cheap" and out["chosen"] == ["beta", "alpha"]
    assert out["policy"] == {**policy, "excluded": {"gamma": "denied"}}
    assert out["details"]["policy"] == out["policy"]
    assert all(not s.state.bodies for s in ups.values())  # nothing generated


async def test_batch_lines_route_under_their_own_policy() -> None:
    """The batch API (in process: the gateway's own worker, the embedded store)."""
    fakes = {name: InProcessUpstream(name) for name in COSTS}
    config = policy_config({name: f.base_url for name, f in fakes.items()})
    lines = [
        ("plain", None),
        ("denied", {"deny": ["alpha"]}),
        ("cheap", {"pipeline": "cheap", "max_cost": 1.5}),
        ("bad", {"allow": ["ghost"]}),
    ]
    content = "\n".join(
        json.dumps(
            {
                "custom_id": cid,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": chat(f"batch {cid}") if p is None else chat(f"batch {cid}", coe=p),
            }
        )
        for cid, p in lines
    ).encode()
    settings = Settings(dev_mode=True, batch_chunk=2, batch_claim_idle_s=0.5)
    async with running_gateway(settings, config, route_to(*fakes.values())) as app:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=GATEWAY_URL)
        ai = openai.AsyncOpenAI(
            base_url=f"{GATEWAY_URL}/v1",
            api_key="unused",
            http_client=http,  # type: ignore[arg-type]  # typed against openai's httpx
            max_retries=0,
        )
        async with ai:
            uploaded = await ai.files.create(file=("in.jsonl", content), purpose="batch")
            batch = await ai.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 20
            while batch.status != "completed":
                assert time.monotonic() < deadline, batch
                await asyncio.sleep(0.05)
                batch = await ai.batches.retrieve(batch.id)
            assert batch.output_file_id is not None and batch.error_file_id is not None
            output = (await ai.files.content(batch.output_file_id)).text.splitlines()
            errors = (await ai.files.content(batch.error_file_id)).text.splitlines()
    answered = {
        (ln := json.loads(raw))["custom_id"]: ln["response"]["body"]["coe"] for raw in output
    }
    assert {cid: meta["expert"] for cid, meta in answered.items()} == {
        "plain": "alpha",
        "denied": "beta",
        "cheap": "beta",
    }
    assert answered["denied"]["decision"]["details"]["policy"]["excluded"] == {"alpha": "denied"}
    assert answered["denied"]["policy"] == answered["denied"]["decision"]["details"]["policy"]
    assert answered["cheap"]["policy"]["max_cost"] == 1.5 and "policy" not in answered["plain"]
    [failed] = [json.loads(raw) for raw in errors]
    assert failed["custom_id"] == "bad" and failed["error"]["code"] == "unknown_expert"
    sent = [b for f in fakes.values() for b in f.state.bodies]
    assert len(sent) == 3 and all("coe" not in b for b in sent)
