"""Batch jobs on real Redis: submit, run, results; shared and killed workers (`coe worker`
processes); cancel; limits (the gateway alone, in-process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.store import keys
from coe.testing import FakeUpstream, Fault
from tests.support.asgi import gateway_client
from tests.support.net import delete_prefix, free_port
from tests.support.server import ServedApp

pytestmark = pytest.mark.redis
REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def jsonl(lines: list[Any]) -> bytes:
    return "\n".join(ln if isinstance(ln, str) else json.dumps(ln) for ln in lines).encode()


def request(i: int, model: str = "coe/auto") -> dict[str, Any]:
    return {
        "custom_id": f"q{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"question {i}"}],
            "max_tokens": 8,
        },
    }


class Deployment:
    """A gateway (no in-process worker) and `coe worker` processes on one Redis prefix."""

    def __init__(self, tmp: Path, config: dict[str, Any], chunk: int = 4):
        self.prefix = f"coe-test-batch:{uuid.uuid4().hex[:10]}:"
        self.cfg = tmp / "experts.yaml"
        self.cfg.write_text(yaml.safe_dump(config))
        self.env = {
            **os.environ,
            "COE_REDIS_URL": REDIS_URL,
            "COE_STORE_PREFIX": self.prefix,
            "COE_BATCH_CLAIM_IDLE_S": "2",
            "COE_BATCH_CHUNK": str(chunk),
            "COE_LOG_LEVEL": "WARNING",
            "COE_EXPERTS_FILE": str(self.cfg),
        }
        settings = Settings(
            redis_url=REDIS_URL,
            store_prefix=self.prefix,
            batch_worker=False,
            batch_chunk=chunk,
            dev_mode=True,
            experts_file=self.cfg,
            batch_max_lines=500,
            batch_claim_idle_s=2,
        )
        self.server = ServedApp(create_app(settings, CoeConfig.model_validate(config))).start()
        self.http = httpx.Client(base_url=self.server.base_url, timeout=30)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, name: str, *extra: str) -> None:
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "coe.cli", "worker", "--name", name, *extra], env=self.env
        )

    def submit(self, content: bytes) -> dict[str, Any]:
        r = self.http.post("/v1/batches", files={"file": ("in.jsonl", content)})
        assert r.status_code == 201, r.text
        return r.json()

    def wait(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/batches/{job_id}").json()
            if job["status"] in ("completed", "cancelled"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"batch {job_id} did not finish: {job}")

    def results(self, job_id: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/v1/batches/{job_id}/results")
        assert r.status_code == 200
        return [json.loads(line) for line in r.text.splitlines()]

    def download(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The result lines as a user downloads them: the output file, then the error file."""
        lines: list[dict[str, Any]] = []
        for field in ("output_file_id", "error_file_id"):
            if job.get(field):
                r = self.http.get(f"/v1/files/{job[field]}/content")
                assert r.status_code == 200, r.text
                lines += [json.loads(line) for line in r.text.splitlines()]
        return lines

    def close(self) -> None:
        for p in self.workers.values():
            if p.poll() is None:
                p.terminate()
        for p in self.workers.values():
            p.wait(timeout=20)
        self.http.close()
        self.server.stop()
        delete_prefix(REDIS_URL, self.prefix)


def fake_config(urls: list[str]) -> dict[str, Any]:
    return {
        "experts": [
            {"name": f"e{i}", "model": f"m{i}", "endpoints": [u], "limits": {"timeout_s": 10}}
            for i, u in enumerate(urls)
        ],
        "default_expert": "e0",
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
    }


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    ups = [FakeUpstream(f"u{i}").start() for i in range(2)]
    for u in ups:
        u.state.keep_bodies = 10_000  # every body: they tell how often each line was asked
    yield ups
    for u in ups:
        u.stop()


@pytest.fixture
def deploy(tmp_path: Path, upstreams: list[FakeUpstream]) -> Iterator[Deployment]:
    d = Deployment(tmp_path, fake_config([u.base_url for u in upstreams]))
    yield d
    d.close()


def reply(expert: str, question: str) -> str:
    """What the fake upstream behind expert e<i> (named u<i>) answers to `question`."""
    return f"[u{expert.removeprefix('e')}] {question}"


def assert_exactly_once(
    results: list[dict[str, Any]], lines: list[dict[str, Any]], ok: bool = True
) -> None:
    """Every line's custom id once, and each successful result the answer to its own line."""
    questions = {ln["custom_id"]: ln["body"]["messages"][-1]["content"] for ln in lines}
    ids = Counter(r["custom_id"] for r in results)
    want = Counter(ln["custom_id"] for ln in lines)
    assert len(results) == len(lines), f"{len(results)} results for {len(lines)} lines"
    assert ids == want, {"extra": ids - want, "missing": want - ids}
    for r in results:
        if r["error"] is not None:
            assert not ok, r
            continue
        question = questions[r["custom_id"]]
        body = r["response"]["body"]
        coe = body["coe"]
        for part in coe.get("answers", []):  # each expert's part of a fanned-out line
            if part["status"] == "ok":
                assert part["answer"] == reply(part["expert"], question), (r["custom_id"], part)
        content = body["choices"][0]["message"]["content"]
        aggregation = coe.get("aggregation") or {}
        if aggregation.get("aggregator") and not aggregation.get("skipped"):
            # the aggregator answered a synthesis prompt; the fake echoes its start only
            assert content.startswith(f"[u{aggregation['aggregator'].removeprefix('e')}] ")
        else:
            assert content == reply(coe["expert"], question), (r["custom_id"], content)


def asked(upstreams: list[FakeUpstream], lines: list[dict[str, Any]]) -> Counter[str]:
    """Per custom id: how many times an upstream was sent the line's own question."""
    by_question = {ln["body"]["messages"][-1]["content"]: ln["custom_id"] for ln in lines}
    counts: Counter[str] = Counter()
    for u in upstreams:
        for body in u.state.bodies:
            found = by_question.get(body["messages"][-1]["content"])
            if found is not None:
                counts[found] += 1
    return counts


@pytest.mark.process
def test_bad_lines_become_error_results(deploy: Deployment) -> None:
    metrics_port = free_port()
    deploy.start_worker("w1", "--metrics-port", str(metrics_port))
    content = jsonl(
        [
            request(0),
            "{not json",
            {"custom_id": "nobody"},
            request(3, model="no-such-model"),
            {**request(4), "url": "/v1/embeddings"},
            request(0),  # duplicate custom_id
            {"custom_id": "m", "body": {"model": "e1", "messages": []}},
            request(7, model="e1"),
        ]
    )
    job = deploy.wait(deploy.submit(content)["id"])
    results = deploy.results(job["id"])
    downloaded = deploy.download(job)
    assert sorted(r["id"] for r in downloaded) == sorted(r["id"] for r in results)
    assert Counter(r["custom_id"] for r in downloaded) == Counter(
        {"q0": 2, "line-2": 1, "nobody": 1, "q3": 1, "q4": 1, "m": 1, "q7": 1}
    )
    answers = [r for r in downloaded if r["error"] is None]
    assert_exactly_once(answers, [request(0), request(7, model="e1")])
    by_line = {int(r["id"].rsplit("_", 1)[1]): r for r in results}
    assert by_line[0]["response"]["status_code"] == 200
    assert "not valid JSON" in by_line[1]["error"]["message"]
    assert "missing body" in by_line[2]["error"]["message"]
    assert by_line[3]["error"]["code"] == "model_not_found"
    assert "unsupported url" in by_line[4]["error"]["message"]
    assert "duplicate custom_id" in by_line[5]["error"]["message"]
    assert "messages" in by_line[6]["error"]["message"]
    assert by_line[7]["response"]["body"]["coe"]["expert"] == "e1"
    assert job["request_counts"] == {"total": 8, "completed": 2, "failed": 6}
    # the worker counts the lines it answered (bad lines were answered at submission)
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'coe_batch_items_total{status="completed"} 2.0' in metrics
    assert 'coe_batch_items_total{status="failed"} 1.0' in metrics
    assert 'coe_expert_latency_seconds_count{expert="e1",outcome="ok"}' in metrics


@pytest.mark.process
def test_two_workers_share_a_job(deploy: Deployment, upstreams: list[FakeUpstream]) -> None:
    for u in upstreams:
        u.fault = Fault(delay_s=0.05)
    deploy.start_worker("w1")
    deploy.start_worker("w2")
    lines = [request(i, model=f"e{i % 2}") for i in range(60)]
    job = deploy.wait(deploy.submit(jsonl(lines))["id"])
    results = deploy.download(job)
    assert_exactly_once(results, lines)
    assert asked(upstreams, lines) == Counter(ln["custom_id"] for ln in lines)
    assert all(r["response"]["status_code"] == 200 for r in results)
    workers = Counter(r["response"]["body"]["coe"]["worker"] for r in results)
    assert set(workers) == {"w1", "w2"}, workers
    # each line was answered by the expert it asked for
    for r in results:
        i = int(r["custom_id"][1:])
        assert r["response"]["body"]["coe"]["expert"] == f"e{i % 2}"
    # finished units are deleted from the work stream: it does not grow job after job
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stream = deploy.prefix + keys.BATCH_STREAM
        deadline = time.monotonic() + 10
        while client.xlen(stream) and time.monotonic() < deadline:  # the last ack is racing
            time.sleep(0.1)
        assert client.xlen(stream) == 0
    finally:
        client.close()


@pytest.mark.process
def test_sigkill_mid_job_loses_nothing(deploy: Deployment, upstreams: list[FakeUpstream]) -> None:
    for u in upstreams:
        u.fault = Fault(delay_s=0.15)
    deploy.start_worker("doomed")
    deploy.start_worker("survivor")
    lines = [request(i, model=f"e{i % 2}") for i in range(80)]
    job_id = deploy.submit(jsonl(lines))["id"]
    deadline = time.monotonic() + 60
    while deploy.http.get(f"/v1/batches/{job_id}").json()["request_counts"]["completed"] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deploy.workers["doomed"].send_signal(signal.SIGKILL)
    deploy.workers["doomed"].wait()
    job = deploy.wait(job_id)
    results = deploy.download(job)
    assert job["status"] == "completed"
    assert_exactly_once(results, lines)
    # only the lines in flight in the dead worker's unit may be asked again
    calls = asked(upstreams, lines)
    assert set(calls) == {ln["custom_id"] for ln in lines}
    assert max(calls.values()) <= 2, calls.most_common(3)
    assert sum(v - 1 for v in calls.values()) <= 4, calls.most_common(5)  # one unit (chunk)
    assert job["request_counts"] == {"total": 80, "completed": 80, "failed": 0}


@pytest.mark.process
def test_cancel(deploy: Deployment, upstreams: list[FakeUpstream]) -> None:
    for u in upstreams:
        u.fault = Fault(delay_s=0.3)
    deploy.start_worker("w1")
    lines = [request(i) for i in range(40)]
    job_id = deploy.submit(jsonl(lines))["id"]
    deadline = time.monotonic() + 60  # the worker may take a while to start on a busy machine
    while deploy.http.get(f"/v1/batches/{job_id}").json()["request_counts"]["completed"] == 0:
        assert time.monotonic() < deadline, "no line was answered within 60 s"
        time.sleep(0.05)
    r = deploy.http.post(f"/v1/batches/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    assert deploy.http.post(f"/v1/batches/{job_id}/cancel").status_code == 409
    job = deploy.wait(job_id)
    assert job["status"] == "cancelled"
    results = deploy.download(job)
    assert_exactly_once(results, lines, ok=False)
    cancelled = [r for r in results if r["error"] and r["error"]["code"] == "batch_cancelled"]
    assert 0 < len(cancelled) < 40
    assert {r["error"]["code"] for r in results if r["error"]} == {"batch_cancelled"}
    # every answered line was asked once; a cancelled line was asked at most once (in flight)
    calls = asked(upstreams, lines)
    answered = {r["custom_id"] for r in results if r["error"] is None}
    assert answered <= set(calls) and max(calls.values()) == 1, calls.most_common(3)


async def test_limits_and_unknown_jobs() -> None:
    """The gateway alone, in-process, as the deployment's (no worker is needed to refuse)."""
    prefix = f"coe-test-batch:{uuid.uuid4().hex[:10]}:"
    settings = Settings(
        redis_url=REDIS_URL,
        store_prefix=prefix,
        batch_worker=False,
        dev_mode=True,
        batch_max_lines=500,
    )
    config = CoeConfig.model_validate(fake_config(["http://u0.test", "http://u1.test"]))
    try:
        async with gateway_client(settings, config, timeout=30) as http:
            too_many = jsonl([request(i) for i in range(501)])
            r = await http.post("/v1/batches", files={"file": ("big.jsonl", too_many)})
            assert r.status_code == 413 and "limit is 500" in r.json()["error"]["message"]
            r = await http.post(
                "/v1/batches", content=b"\n\n", headers={"content-type": "application/jsonl"}
            )
            assert r.status_code == 400 and "no requests" in r.json()["error"]["message"]
            assert (await http.get("/v1/batches/batch_nope")).status_code == 404
            assert (await http.get("/v1/batches/batch_nope/results")).status_code == 404
    finally:
        delete_prefix(REDIS_URL, prefix)


@pytest.mark.process
def test_k2_lines_run_per_expert_then_aggregate_last(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    config = fake_config([u.base_url for u in upstreams])
    config["pipelines"]["auto"] = {
        "routers": ["default"],
        "k": 2,
        "aggregation": {"strategy": "synthesize", "aggregator": "e1", "skip_if_agree": False},
    }
    d = Deployment(tmp_path, config, chunk=5)
    try:
        upstreams[0].fault = Fault(mode="status", status=500, times=1)  # one answer is lost
        d.start_worker("w1")
        lines = [request(i) for i in range(12)]
        job = d.wait(d.submit(jsonl(lines))["id"])
        results = d.download(job)
        assert_exactly_once(results, lines)
        assert job["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
        partial = 0
        for r in results:
            coe = r["response"]["body"]["coe"]
            assert [a["expert"] for a in coe["answers"]] == ["e0", "e1"]
            if coe["answers"][0]["status"] == "failed":
                partial += 1
                assert coe["aggregation"]["skipped"] == "only one expert answered"
            else:
                assert coe["aggregation"]["aggregator"] == "e1"
                assert r["response"]["body"]["model"] == "e1"
                # the synthesis prompt carried both answers
                assert r["response"]["body"]["usage"]["total_tokens"] > 0
        assert partial == 1
        # each expert answered every line once, and e1 also aggregated 11 of them
        assert upstreams[0].state.requests == 12
        assert upstreams[1].state.requests == 12 + 11
        assert asked(upstreams, lines) == Counter({ln["custom_id"]: 2 for ln in lines})
    finally:
        d.close()
