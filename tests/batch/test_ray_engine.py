"""The Ray batch engine against the Redis engine: one 200-line file (real routing with the
int8 MiniLM, k = 1, k = 2 with aggregation, dynamic k, routing policies, bad lines, an
expert that always fails) through both, line by line the same decisions, experts and
errors. Experts are fault-injecting OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from coe.cli.local_engine import run_local
from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.ray_batch import RayOptions, run_on_ray
from coe.testing import FakeUpstream, Fault
from tests.conftest import REDIS_URL, TEST_DATA
from tests.support.net import delete_prefix

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.embed]
REPO = Path(__file__).resolve().parents[2]
EXPERTS = ("generalist", "math-tutor", "coder", "flaky")


def config(urls: dict[str, str]) -> dict[str, Any]:
    shipped = yaml.safe_load((REPO / "experts.yaml").read_text())
    topic = shipped["routers"]["topic"]
    topic["params"]["routes"]["flaky"] = ["Translate this sentence into German."]
    topic["params"]["threshold"] = 0.0  # every line routed: the k = 2 lines all fan out
    return {
        "encoder": "minilm-int8",
        "experts": [
            {"name": n, "model": n, "endpoints": [urls[n]], "limits": {"timeout_s": 10}}
            for n in EXPERTS
        ],
        "default_expert": "generalist",
        "routers": {"topic": topic},
        "pipelines": {
            "auto": {"routers": ["topic", "default"]},
            "duo": {
                "routers": ["topic"],
                "k": 2,
                "aggregation": {"strategy": "synthesize", "aggregator": "generalist"},
            },
            "dyn": {"routers": ["topic"], "dynamic_k": {"tau": 0.9, "max_k": 3}},
        },
        "routers_dirs": [str(REPO / "routers")],
    }


def questions() -> list[str]:
    shipped = [json.loads(x)["text"] for x in (TEST_DATA / "shipped_requests.jsonl").open()]
    pro = [json.loads(x)["question"] for x in (TEST_DATA / "mmlu_pro" / "validation.jsonl").open()]
    return (shipped + [q[:300] for q in pro])[:190] + ["Translate good night into German."] * 2


def request(cid: str, question: str, model: str, **coe: Any) -> str:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": question}]}
    if coe:
        body["coe"] = coe
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def batch_file() -> list[str]:
    """192 good lines (every fifth on the k = 2 pipeline, every seventh on dynamic k, some
    with a policy), then 8 bad ones; 200 in all."""
    lines = []
    for i, q in enumerate(questions()):
        model = "coe/duo" if i % 5 == 0 else "coe/dyn" if i % 7 == 0 else "coe/auto"
        policy = {"deny": ["math-tutor"]} if i % 11 == 0 else {}
        lines.append(request(f"q{i}", q, model, **policy))
    lines += [
        "this is not json",
        json.dumps(["a", "list"]),
        json.dumps({"body": {"model": "coe/auto"}}),  # no custom_id
        request("q3", "a second q3", "coe/auto"),  # duplicate custom_id
        request("bad-model", "hi", "no-such-model"),
        request("bad-url", "hi", "coe/auto").replace("/v1/chat/completions", "/v1/embeddings"),
        json.dumps({"custom_id": "no-user", "body": {"model": "coe/auto", "messages": []}}),
        request("deny-all", "hi", "coe/auto", allow=["nobody"]),
    ]
    assert len(lines) == 200
    return lines


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    servers = {n: FakeUpstream(n).start() for n in EXPERTS}
    servers["flaky"].fault = Fault(mode="status", status=500)  # always: lines fall back
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, FakeUpstream], ray_local: None
) -> dict[str, dict[str, dict[str, Any]]]:
    """The same file and config through the Redis engine (real Redis, two workers) and the
    Ray engine (local Ray); each engine's output lines by custom_id."""
    tmp = tmp_path_factory.mktemp("ray-engine")
    cfg = config({n: s.base_url for n, s in upstreams.items()})
    (tmp / "experts.yaml").write_text(yaml.safe_dump(cfg))
    source = tmp / "in.jsonl"
    source.write_text("\n".join(batch_file()) + "\n")
    prefix = "coe-test-ray-engine:"
    redis_settings = Settings(
        redis_url=REDIS_URL,
        store_prefix=prefix,
        experts_file=tmp / "experts.yaml",
        batch_worker=False,
        batch_chunk=16,
        batch_claim_idle_s=5,
    )
    try:
        asyncio.run(run_local(redis_settings, source, tmp / "redis.jsonl", 2))
    finally:
        delete_prefix(REDIS_URL, prefix)
    summary = run_on_ray(
        str(source),
        str(tmp / "ray.jsonl"),
        Settings(redis_url=None, experts_file=tmp / "experts.yaml"),
        CoeConfig.model_validate(cfg),
        RayOptions(route_actors=1, answer_actors=1, route_batch=32),
    )
    assert summary.total == 200
    out = {}
    for engine in ("redis", "ray"):
        lines = [json.loads(x) for x in (tmp / f"{engine}.jsonl").read_text().splitlines()]
        out[engine] = {"_order": [ln["custom_id"] for ln in lines]}  # type: ignore[dict-item]
        seen: dict[str, Any] = {}
        for ln in lines:
            key = ln["custom_id"] if ln["custom_id"] not in seen else ln["custom_id"] + "#dup"
            seen[key] = ln
        out[engine].update(seen)
    out["summary"] = summary.to_dict()
    return out


def what(line: dict[str, Any]) -> dict[str, Any]:
    """What must agree between engines: the decision, who answered, or the error."""
    if line["error"] is not None:
        return {
            "error": line["error"]["code"],
            "message": line["error"]["message"],
            "status": (line["response"] or {}).get("status_code"),
        }
    coe = line["response"]["body"]["coe"]
    decision = coe["decision"]
    return {
        "router": decision["router"],
        "k": decision["k"],
        "candidates": [c["expert"] for c in decision["candidates"]],
        "expert": coe["expert"],
        "experts": coe["experts"],
        "policy": coe.get("policy"),
        "aggregator": (coe.get("aggregation") or {}).get("aggregator"),
    }


def test_same_decisions_and_experts_as_the_redis_engine(runs: dict[str, Any]) -> None:
    redis, ray_ = runs["redis"], runs["ray"]
    assert ray_["_order"] == redis["_order"]  # one line per input line, in input order
    assert len(redis["_order"]) == 200
    differ = {
        cid: (what(redis[cid]), what(ray_[cid]))
        for cid in redis
        if cid != "_order" and what(redis[cid]) != what(ray_[cid])
    }
    assert not differ, json.dumps(differ, indent=1)[:3000]
    # scores agree too, up to the encoder's float noise (texts are batched differently)
    for cid in redis["_order"]:
        if redis[cid]["error"] is None:
            a, b = (e[cid]["response"]["body"]["coe"]["decision"] for e in (redis, ray_))
            for x, y in zip(a["candidates"], b["candidates"], strict=True):
                assert x["score"] == pytest.approx(y["score"], abs=1e-3), cid
    # the line ids count input lines the same way on both engines
    for cid in redis["_order"][:5]:
        assert redis[cid]["id"].rsplit("_", 1)[1] == ray_[cid]["id"].rsplit("_", 1)[1]


def test_every_expert_group_and_the_fallback_ran(runs: dict[str, Any]) -> None:
    ray_ = runs["ray"]
    answered = [ln for cid, ln in ray_.items() if cid != "_order" and ln["error"] is None]
    experts = {ln["response"]["body"]["coe"]["expert"] for ln in answered}
    assert {"generalist", "math-tutor", "coder"} <= experts
    fell_back = [
        ln
        for ln in answered
        if any(f["expert"] == "flaky" for f in ln["response"]["body"]["coe"]["failures"])
    ]
    assert fell_back, "no line was routed to the failing expert first"
    assert all(ln["response"]["body"]["coe"]["expert"] != "flaky" for ln in answered)
    assert runs["summary"]["experts"]["flaky"] >= 1


def test_k2_lines_are_aggregated(runs: dict[str, Any]) -> None:
    ray_ = runs["ray"]
    duo = [ray_[f"q{i}"] for i in range(0, 190, 5)]
    for line in duo:
        assert line["error"] is None, line
        coe = line["response"]["body"]["coe"]
        assert coe["decision"]["k"] == 2
        failed = [f["expert"] for f in coe["failures"]]
        assert sorted(coe["experts"] + failed) == sorted(
            c["expert"] for c in coe["decision"]["candidates"][:2]
        ), coe
        report = coe["aggregation"]
        assert report["strategy"] == "synthesize"
        if not report["skipped"]:
            assert report["aggregator"] == "generalist"
    assert any(not ln["response"]["body"]["coe"]["aggregation"]["skipped"] for ln in duo)


def test_bad_lines_get_error_lines(runs: dict[str, Any]) -> None:
    ray_ = runs["ray"]
    codes = {
        cid: ln["error"]["code"]
        for cid, ln in ray_.items()
        if cid != "_order" and ln["error"] is not None
    }
    assert codes["line-193"] == "invalid_request"  # not JSON
    assert codes["line-194"] == "invalid_request"  # not an object
    assert codes["line-195"] == "invalid_request"  # no custom_id
    assert "duplicate custom_id 'q3'" in ray_["q3#dup"]["error"]["message"]
    assert ray_["q3"]["error"] is None  # the first q3 keeps its answer
    assert codes["bad-model"] == "model_not_found"
    assert ray_["bad-model"]["response"]["status_code"] == 404
    assert "unsupported url" in ray_["bad-url"]["error"]["message"]
    assert codes["no-user"] == "invalid_request"
    assert ray_["deny-all"]["response"]["status_code"] == 400
    assert runs["summary"]["request_counts"]["failed"] == len(codes) == 8
