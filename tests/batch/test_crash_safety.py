"""Crash safety of batch workers on real Redis: `coe worker` processes killed at each fault
point, a poison unit, lost phase queueing found by the sweeper, long units kept by their
worker, and a 10,000-line job over 4 workers. The fake upstream's bodies tell how often
each line was answered (its custom id is in the question)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import yaml

from coe.batch.units import Unit
from coe.batch.work import BatchWork
from coe.batch.worker import BatchWorker
from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.routing.decision import Candidate, RouteDecision
from coe.store import keys
from coe.store.embedded import EmbeddedStore
from coe.supervisor import supervise
from coe.testing import FakeUpstream, Fault
from tests.support.net import delete_prefix, free_port
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MARK = re.compile(r"<<(q\d+)>>")


def question(i: int) -> str:
    return f"<<q{i}>> question {i}"


def jsonl(n: int, model: str = "coe/auto") -> bytes:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": question(i)}],
                    "max_tokens": 8,
                },
            }
        )
        for i in range(n)
    ).encode()


def fake_config(urls: list[str], k: int = 1) -> dict[str, Any]:
    pipeline: dict[str, Any] = {"routers": ["default"]}
    if k > 1:
        pipeline |= {
            "k": k,
            "aggregation": {"strategy": "synthesize", "aggregator": "e1", "skip_if_agree": False},
        }
    return {
        "experts": [
            {"name": f"e{i}", "model": f"m{i}", "endpoints": [u], "limits": {"timeout_s": 30}}
            for i, u in enumerate(urls)
        ],
        "default_expert": "e0",
        "pipelines": {"auto": pipeline},
        "routers_dirs": [str(REPO / "routers")],
    }


class Deployment:
    """A gateway (no in-process worker) and `coe worker` processes on one Redis prefix."""

    def __init__(self, tmp: Path, config: dict[str, Any], chunk: int = 4, claim_idle_s: float = 2):
        self.prefix = f"coe-test-crash:{uuid.uuid4().hex[:10]}:"
        self.cfg = tmp / "experts.yaml"
        self.cfg.write_text(yaml.safe_dump(config))
        self.env = {
            **os.environ,
            "COE_REDIS_URL": REDIS_URL,
            "COE_STORE_PREFIX": self.prefix,
            "COE_BATCH_CLAIM_IDLE_S": str(claim_idle_s),
            "COE_BATCH_CHUNK": str(chunk),
            "COE_LOG_LEVEL": "WARNING",
            "COE_EXPERTS_FILE": str(self.cfg),
        }
        self.env.pop("COE_BATCH_FAULT", None)
        settings = Settings(
            redis_url=REDIS_URL,
            store_prefix=self.prefix,
            batch_worker=False,
            batch_chunk=chunk,
            dev_mode=True,
            experts_file=self.cfg,
            batch_max_lines=20_000,
            batch_claim_idle_s=claim_idle_s,
        )
        self.server = ServedApp(create_app(settings, CoeConfig.model_validate(config))).start()
        self.http = httpx.Client(base_url=self.server.base_url, timeout=60)
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, name: str, *extra: str, fault: str | None = None) -> None:
        env = self.env if fault is None else {**self.env, "COE_BATCH_FAULT": fault}
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "coe.cli", "worker", "--name", name, *extra], env=env
        )

    def submit(self, content: bytes) -> str:
        r = self.http.post("/v1/batches", files={"file": ("in.jsonl", content)})
        assert r.status_code == 201, r.text
        job_id = str(r.json()["id"])
        self.until(lambda: self.entries(job_id), "the job's units were never queued")
        return job_id

    def until(self, ok: Any, what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    def entries(self, job_id: str) -> list[str]:
        """Ids of the job's entries on the work stream (acknowledged or not)."""
        stream = self.prefix + keys.BATCH_STREAM
        entries = cast(list[tuple[str, dict[str, str]]], self.redis.xrange(stream))
        return [i for i, f in entries if f.get("job") == job_id]

    def wait(self, job_id: str, timeout_s: float = 60) -> None:
        def finished() -> bool:
            status = self.http.get(f"/v1/batches/{job_id}").json()["status"]
            return status in ("completed", "failed", "cancelled", "expired")

        self.until(finished, f"batch {job_id} did not finish", timeout_s)

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """The result lines as a user downloads them: the output file, then the error file."""
        job = self.http.get(f"/v1/batches/{job_id}").json()
        lines: list[dict[str, Any]] = []
        for field in ("output_file_id", "error_file_id"):
            if job.get(field):
                r = self.http.get(f"/v1/files/{job[field]}/content")
                assert r.status_code == 200, r.text
                lines += [json.loads(line) for line in r.text.splitlines()]
        return lines

    def exited(self, name: str, timeout_s: float = 60) -> int:
        return self.workers[name].wait(timeout=timeout_s)

    def close(self) -> None:
        for p in self.workers.values():
            if p.poll() is None:
                p.terminate()
        for p in self.workers.values():
            p.wait(timeout=20)
        self.http.close()
        self.server.stop()
        self.redis.close()
        delete_prefix(REDIS_URL, self.prefix)


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    ups = [FakeUpstream(f"u{i}").start() for i in range(2)]
    for u in ups:
        u.state.keep_bodies = 50_000
    yield ups
    for u in ups:
        u.stop()


def answered(upstream: FakeUpstream) -> Counter[str]:
    """Per custom id: how many times the upstream answered the line's own question."""
    counts: Counter[str] = Counter()
    for body in upstream.state.bodies:
        text = body["messages"][-1]["content"]
        found = MARK.findall(text)
        if found and text == question(int(found[0][1:])):
            counts[found[0]] += 1
    return counts


def combined(upstream: FakeUpstream) -> Counter[str]:
    """Per custom id: how many aggregation prompts (they quote the question) it received."""
    counts: Counter[str] = Counter()
    for body in upstream.state.bodies:
        text = json.dumps(body["messages"])
        ids = set(MARK.findall(text))
        if ids and not any(
            m["content"] == question(int(i[1:])) for m in body["messages"] for i in ids
        ):
            counts.update(ids)
    return counts


def assert_exactly_once(results: list[dict[str, Any]], n: int) -> None:
    """Each line's custom id once, every line answered, and each answer to its own question
    (the fake upstream behind e<i>, named u<i>, echoes the question it was asked)."""
    ids = Counter(r["custom_id"] for r in results)
    assert len(results) == n, f"{len(results)} results for {n} lines"
    assert ids == Counter(f"q{i}" for i in range(n)), [c for c, v in ids.items() if v > 1]
    assert all(r["error"] is None for r in results), [r for r in results if r["error"]][:3]
    for r in results:
        asked = question(int(r["custom_id"][1:]))
        coe = r["response"]["body"]["coe"]
        for part in coe.get("answers", []):  # each expert's part of a fanned-out line
            assert part["answer"] == f"[u{part['expert'][1:]}] {asked}", (r["custom_id"], part)
        content = r["response"]["body"]["choices"][0]["message"]["content"]
        if coe.get("answers"):  # the aggregator e1 answered a synthesis prompt (echoed cut)
            assert content.startswith("[u1] "), (r["custom_id"], content)
        else:
            assert content == f"[u{coe['expert'][1:]}] {asked}", (r["custom_id"], content)


def assert_at_most_twice(counts: Counter[str], n: int, twice_at_most: int) -> None:
    assert set(counts) == {f"q{i}" for i in range(n)}, "a line was never answered"
    assert max(counts.values()) <= 2, counts.most_common(3)
    twice = [c for c, v in counts.items() if v == 2]
    assert len(twice) <= twice_at_most, twice


# -- a worker dies at each fault point; a restarted one finishes the job -------------------
@pytest.mark.process
@pytest.mark.redis
@pytest.mark.parametrize(
    ("fault", "k"),
    [
        ("route:saved:3", 1),
        ("queue:locked:1", 1),
        ("run:answered:3", 1),
        ("aggregate:answered:2", 2),
    ],
)
def test_a_worker_killed_at_each_point_loses_nothing(
    tmp_path: Path, upstreams: list[FakeUpstream], fault: str, k: int
) -> None:
    n, chunk = 16, 4
    d = Deployment(tmp_path, fake_config([u.base_url for u in upstreams], k=k), chunk=chunk)
    try:
        d.start_worker("doomed", fault=fault)
        job_id = d.submit(jsonl(n))
        assert d.exited("doomed") == 137, "the fault point was never reached"
        d.start_worker("rescuer")
        d.wait(job_id)
        assert_exactly_once(d.results(job_id), n)
        # the lines in flight in the dead worker's unit may be answered again, no others
        assert_at_most_twice(answered(upstreams[0]), n, twice_at_most=chunk)
        if k == 2:
            assert_at_most_twice(answered(upstreams[1]), n, twice_at_most=chunk)
            assert_at_most_twice(combined(upstreams[1]), n, twice_at_most=chunk)
    finally:
        d.close()


# -- a unit that always fails --------------------------------------------------------------
@pytest.mark.process
@pytest.mark.redis
def test_a_poison_unit_fails_its_lines_and_the_job_goes_on(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    d = Deployment(tmp_path, fake_config([u.base_url for u in upstreams]), chunk=4)
    try:
        job_id = d.submit(jsonl(12))
        # line 5 becomes one the worker cannot read: its route unit (lines 4-7) always raises
        d.redis.hset(d.prefix + keys.batch_items(job_id), "5", "{not json")
        metrics_port = free_port()
        d.start_worker("w1", "--metrics-port", str(metrics_port))
        d.wait(job_id)
        results = d.results(job_id)
        assert len(results) == 12
        failed = {r["custom_id"]: r["error"] for r in results if r["error"] is not None}
        assert sorted(failed) == ["line-6", "q4", "q6", "q7"]
        for error in failed.values():
            assert error["code"] == "batch_unit_failed"
            assert "route unit (lines 4-7) failed 3 times: JSONDecodeError" in error["message"]
        assert answered(upstreams[0]) == Counter({f"q{i}": 1 for i in (0, 1, 2, 3, 8, 9, 10, 11)})
        assert d.workers["w1"].poll() is None, "the worker exited on a bad unit"
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'coe_batch_unit_errors_total{phase="route"} 3.0' in metrics
        assert 'coe_batch_units_given_up_total{phase="route"} 1.0' in metrics
        assert 'coe_batch_items_total{status="failed"} 4.0' in metrics
        assert 'coe_batch_unit_seconds_count{phase="run"}' in metrics
        assert "coe_batch_expert_groups_count 1.0" in metrics
        assert 'coe_batch_queue_depth{state="pending"}' in metrics
    finally:
        d.close()


class _NoEngine:
    def __call__(self) -> Any:
        raise AssertionError("a unit given up runs nothing")


async def embedded_job(items: dict[str, str]) -> tuple[EmbeddedStore, BatchWork]:
    """A job of `items` with one route unit queued, in the embedded store."""
    store = EmbeddedStore()
    work = BatchWork(store, chunk=len(items))
    await store.hset(keys.batch_job("b1"), {"status": "in_progress", "total": str(len(items))})
    await store.hset(keys.batch_items("b1"), items)
    await work.ensure_group()
    await work.enqueue([Unit("b1", "route", 0, len(items))])
    return store, work


async def test_a_unit_its_workers_died_on_is_given_up() -> None:
    """Workers that die on a unit record no error: its delivery count alone gives it up."""
    items = {str(i): json.dumps({"custom_id": f"q{i}", "body": {}}) for i in range(2)}
    store, work = await embedded_job(items)
    await store.xreadgroup(keys.BATCH_STREAM, keys.BATCH_GROUP, "dead0", count=1, block_ms=10)
    for consumer in ("dead1", "dead2"):  # two more workers took it over and died
        await store.xautoclaim(keys.BATCH_STREAM, keys.BATCH_GROUP, consumer, 0)
    worker = BatchWorker(work, _NoEngine(), name="w", claim_idle_s=0.001, max_deliveries=3)
    [(entry_id, unit)] = await work.claim("w", idle_ms=0)
    await worker.handle(entry_id, unit)
    results = [json.loads(r) for r in (await store.hgetall(keys.batch_results("b1"))).values()]
    assert sorted(r["custom_id"] for r in results) == ["q0", "q1"]
    assert {r["error"]["message"] for r in results} == {
        "batch route unit (lines 0-1) failed 3 times: its worker stopped while on it"
    }
    assert await store.xdepth(keys.BATCH_STREAM, keys.BATCH_GROUP) == (0, 0)  # acknowledged
    assert await store.get(keys.batch_flag("b1", "runs-queued")) == "0"  # the job went on


async def test_a_unit_that_raises_is_given_up_at_its_last_delivery() -> None:
    store, work = await embedded_job({"0": "{not json"})
    worker = BatchWorker(work, _NoEngine(), name="w", claim_idle_s=60, max_deliveries=1)
    [(entry_id, unit)] = await work.claim("w", idle_ms=60_000)
    await worker.handle(entry_id, unit)  # no second delivery needed
    [raw] = (await store.hgetall(keys.batch_results("b1"))).values()
    error = json.loads(raw)["error"]
    assert error["code"] == "batch_unit_failed"
    assert error["message"].startswith("batch route unit (lines 0-0) failed 1 times: JSONDecode")
    assert await store.xdepth(keys.BATCH_STREAM, keys.BATCH_GROUP) == (0, 0)


async def queued_units(store: EmbeddedStore) -> list[Unit]:
    return [Unit.parse(f) for _, f in await store.xbacklog(keys.BATCH_STREAM, keys.BATCH_GROUP)]


def _k2_decision() -> dict[str, Any]:
    """A stored decision that sends a line to e0 and e1."""
    candidates = (Candidate("e0", 1.0), Candidate("e1", 0.5))
    return RouteDecision(candidates, router="test", reason="both", k=2).to_dict()


async def drain(store: EmbeddedStore) -> None:
    for entry_id, _ in await store.xbacklog(keys.BATCH_STREAM, keys.BATCH_GROUP):
        await store.xack(keys.BATCH_STREAM, keys.BATCH_GROUP, entry_id)
    await store.xreadgroup(keys.BATCH_STREAM, keys.BATCH_GROUP, "x", count=100, block_ms=1)
    for entry_id, _ in await store.xbacklog(keys.BATCH_STREAM, keys.BATCH_GROUP):
        await store.xack(keys.BATCH_STREAM, keys.BATCH_GROUP, entry_id)


async def test_the_sweeper_queues_what_each_phase_lacks() -> None:
    """Three k = 2 lines, the job's work lost at each phase in turn."""
    items = {str(i): json.dumps({"custom_id": f"q{i}", "body": {}}) for i in range(3)}
    store, work = await embedded_job(items)
    work.chunk = 2
    await drain(store)
    assert await work.sweepable() == ["b1"]
    # route: the lines not route-done, in ranges of at most a chunk
    await work.route_done("b1", 1)
    await work.redrive("b1", "sweeper", ttl_s=60)
    assert [(u.phase, u.start, u.end) for u in await queued_units(store)] == [
        ("route", 0, 1),
        ("route", 2, 3),
    ]
    assert await work.sweepable() == []  # its work is queued now
    # runs: every line routed to e0 and e1, the run units never queued
    route = {"decision": _k2_decision()}
    for i in range(3):
        await work.save_route("b1", i, route)
    await drain(store)
    await work.redrive("b1", "sweeper", ttl_s=60)
    runs = await queued_units(store)
    assert [(u.expert, u.items) for u in runs] == [
        ("e0", (0, 1)),
        ("e0", (2,)),
        ("e1", (0, 1)),
        ("e1", (2,)),
    ]
    # runs queued, one of them lost
    await drain(store)
    for unit in runs[1:]:
        await work.run_done(unit, "w", ttl_s=60)
    await work.redrive("b1", "sweeper", ttl_s=60)
    assert await queued_units(store) == [runs[0]]
    # every run done but the aggregates never queued (their queuer died holding the lock)
    await drain(store)
    await store.hsetnx(keys.batch_runs_done("b1"), runs[0].key, "1")
    await work.redrive("b1", "sweeper", ttl_s=60)
    assert await queued_units(store) == [
        Unit("b1", "aggregate", items=(0, 1)),
        Unit("b1", "aggregate", items=(2,)),
    ]
    # a finished job leaves the sweeper's index
    await drain(store)
    for i in range(3):
        await work.write_result("b1", i, {"custom_id": f"q{i}"}, failed=False)
    assert await work.sweepable() == []
    assert await store.hgetall(keys.BATCH_ACTIVE) == {}


async def test_aggregates_are_queued_when_runs_finish_before_their_flag() -> None:
    items = {str(i): json.dumps({"custom_id": f"q{i}", "body": {}}) for i in range(1)}
    store, work = await embedded_job(items)
    await drain(store)
    route = {"decision": _k2_decision()}
    await work.save_route("b1", 0, route)
    for expert in ("e0", "e1"):  # both run units already done when the runs are queued
        await store.hsetnx(keys.batch_runs_done("b1"), f"{expert}:0", "1")
    assert await work.queue_runs_when_routed("b1", "w", ttl_s=60) == 2
    assert Unit("b1", "aggregate", items=(0,)) in await queued_units(store)


async def test_the_in_process_worker_is_restarted_when_it_dies() -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")

    await asyncio.wait_for(supervise("flaky", flaky, backoff_s=0.01), 5)
    assert runs == 3


# -- the sweeper ------------------------------------------------------------------------------
@pytest.mark.process
@pytest.mark.redis
def test_the_sweeper_queues_work_whose_stream_entries_were_lost(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    d = Deployment(tmp_path, fake_config([u.base_url for u in upstreams]), chunk=4)
    try:
        job_id = d.submit(jsonl(10))
        d.redis.xdel(d.prefix + keys.BATCH_STREAM, *d.entries(job_id))
        d.start_worker("w1")
        d.wait(job_id)
        assert_exactly_once(d.results(job_id), 10)
        assert answered(upstreams[0]) == Counter({f"q{i}": 1 for i in range(10)})
    finally:
        d.close()


@pytest.mark.process
@pytest.mark.redis
def test_the_sweeper_queues_a_phase_whose_queueing_was_lost(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    d = Deployment(tmp_path, fake_config([u.base_url for u in upstreams]), chunk=4)
    try:
        d.start_worker("doomed", fault="queue:locked:1")  # dies holding the runs' lock
        job_id = d.submit(jsonl(10))
        assert d.exited("doomed") == 137
        # and its route units look done: nothing is left on the stream for the job
        stream = d.prefix + keys.BATCH_STREAM
        d.redis.xack(stream, keys.BATCH_GROUP, *d.entries(job_id))
        d.start_worker("w1")
        d.wait(job_id)
        assert_exactly_once(d.results(job_id), 10)
        assert answered(upstreams[0]) == Counter({f"q{i}": 1 for i in range(10)})
    finally:
        d.close()


# -- long units --------------------------------------------------------------------------------
@pytest.mark.process
@pytest.mark.redis
def test_a_live_workers_long_unit_is_not_taken_over(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    d = Deployment(tmp_path, fake_config([u.base_url for u in upstreams]), chunk=8, claim_idle_s=1)
    try:
        upstreams[0].fault = Fault(delay_s=3)  # the run unit takes 3 claim-idle periods
        d.start_worker("w1")
        d.start_worker("w2")  # idle: it would reclaim a unit that looks abandoned
        job_id = d.submit(jsonl(8))
        d.wait(job_id)
        assert_exactly_once(d.results(job_id), 8)
        assert answered(upstreams[0]) == Counter({f"q{i}": 1 for i in range(8)})
    finally:
        d.close()


# -- scale -------------------------------------------------------------------------------------
@pytest.mark.process
@pytest.mark.redis
def test_ten_thousand_lines_over_four_workers(
    tmp_path: Path, upstreams: list[FakeUpstream]
) -> None:
    n = 10_000
    d = Deployment(
        tmp_path, fake_config([u.base_url for u in upstreams]), chunk=500, claim_idle_s=10
    )
    try:
        for i in range(4):
            d.start_worker(f"w{i}")
        started = time.monotonic()
        job_id = d.submit(jsonl(n))
        d.wait(job_id, timeout_s=120)
        elapsed = time.monotonic() - started
        results = d.results(job_id)
        assert_exactly_once(results, n)
        assert answered(upstreams[0]) == Counter({f"q{i}": 1 for i in range(n)})
        workers = Counter(r["response"]["body"]["coe"]["worker"] for r in results)
        assert len(workers) > 1, workers
        assert elapsed < 90, f"{n} lines took {elapsed:.0f} s"
    finally:
        d.close()
