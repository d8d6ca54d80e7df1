"""The batch API as OpenAI's official client drives it: files.create → batches.create →
retrieve → files.content, checked against the `openai` package's own types. In process
(the gateway's own worker runs the jobs on the embedded store); retention on real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from fastapi import FastAPI
from openai.types import Batch, FileObject

from coe.batch.wire import decode_upload, read_batch_file
from coe.cli import main
from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.gateway import create_app
from coe.store import keys
from coe.testing import Fault
from tests.support.asgi import (
    GATEWAY_URL,
    InProcessUpstream,
    asgi_client,
    route_to,
    running_gateway,
)
from tests.support.net import delete_prefix
from tests.support.server import ServedApp

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "admin-token-for-batch-tests-0123"
CHAT: Final = "/v1/chat/completions"


def request(i: int, model: str = "e0") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
    return {"custom_id": f"q{i}", "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return "\n".join(ln if isinstance(ln, str) else json.dumps(ln) for ln in lines).encode()


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"dev_mode": True, "batch_chunk": 2, "batch_claim_idle_s": 0.5}
    return Settings(**{**base, **overrides})


@pytest.fixture
def upstreams() -> list[InProcessUpstream]:
    return [InProcessUpstream("e0"), InProcessUpstream("e1")]


def config_for(upstreams: list[InProcessUpstream]) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {"name": u.state.name, "model": "m", "endpoints": [u.base_url]} for u in upstreams
            ],
            "default_expert": "e0",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
    )


@asynccontextmanager
async def gateway(s: Settings, upstreams: list[InProcessUpstream]) -> AsyncIterator[FastAPI]:
    async with running_gateway(s, config_for(upstreams), route_to(*upstreams)) as app:
        yield app


def client(app: FastAPI, key: str = "no-key-needed") -> openai.AsyncOpenAI:
    """The official client, reaching the gateway through ASGI instead of a socket."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=GATEWAY_URL, timeout=10)
    return openai.AsyncOpenAI(
        base_url=f"{GATEWAY_URL}/v1",
        api_key=key,
        http_client=http,  # type: ignore[arg-type]  # typed against openai's own httpx fork
        max_retries=0,
    )


async def wait(ai: openai.AsyncOpenAI, batch_id: str, *statuses: str) -> Batch:
    deadline = time.monotonic() + 20
    while True:
        batch = await ai.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.05)


async def lines_of(ai: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await ai.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


# -- the official flow ------------------------------------------------------------------------
async def test_official_flow_ends_in_output_and_error_files_in_input_order(
    upstreams: list[InProcessUpstream],
) -> None:
    upstreams[1].fault = Fault(mode="status", status=500)  # e1 answers nothing
    content = jsonl(
        [
            request(0),
            "{not json",
            request(2, model="no-such-model"),
            request(3, model="e1"),
            request(4),
            request(5, model="coe/auto"),
        ]
    )
    async with gateway(settings(), upstreams) as app, client(app) as ai:
        uploaded = await ai.files.create(file=("in.jsonl", content), purpose="batch")
        assert FileObject.model_validate(uploaded.model_dump()) == uploaded
        assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == (
            "batch",
            len(content),
            "in.jsonl",
        )
        assert uploaded.id.startswith("file-") and uploaded.status == "processed"
        assert (await ai.files.content(uploaded.id)).content == content

        created = await ai.batches.create(
            input_file_id=uploaded.id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"run": "nightly"},
        )
        assert created.status == "in_progress" and created.in_progress_at is not None
        assert created.expires_at == created.created_at + 24 * 3600
        batch = await wait(ai, created.id, "completed")
        raw = (await ai.batches.with_raw_response.retrieve(batch.id)).http_response.json()
        assert Batch.model_validate(raw).model_dump(exclude_unset=True) == raw  # nothing else
        assert batch.metadata == {"run": "nightly"} and batch.errors is None
        assert batch.request_counts is not None
        assert batch.request_counts.model_dump() == {"total": 6, "completed": 3, "failed": 3}
        assert batch.finalizing_at is not None and batch.completed_at is not None

        output = await lines_of(ai, batch.output_file_id)
        assert [ln["custom_id"] for ln in output] == ["q0", "q4", "q5"]
        for line in output:
            assert line["id"].startswith("batch_req_") and line["error"] is None
            response = line["response"]
            assert response["status_code"] == 200 and response["request_id"]
            assert response["body"]["choices"][0]["message"]["content"].startswith("[e0]")
            assert response["body"]["coe"]["expert"] == "e0"  # coe's additions, in the body

        errors = await lines_of(ai, batch.error_file_id)
        assert [ln["custom_id"] for ln in errors] == ["line-2", "q2", "q3"]
        assert "not valid JSON" in errors[0]["error"]["message"]
        assert errors[0]["response"]["status_code"] == 400
        assert errors[1]["error"]["code"] == "model_not_found"
        assert errors[1]["response"]["status_code"] == 404
        assert errors[1]["response"]["body"]["error"]["code"] == "model_not_found"
        assert errors[2]["response"]["status_code"] >= 500

        for file_id in (batch.output_file_id, batch.error_file_id):
            assert file_id is not None
            out = await ai.files.retrieve(file_id)
            assert out.purpose == "batch_output"
            assert out.bytes == len((await ai.files.content(file_id)).content)
        listed = [f.id async for f in ai.files.list(purpose="batch_output")]
        assert set(listed) == {batch.output_file_id, batch.error_file_id}
        deleted = await ai.files.delete(uploaded.id)
        assert deleted.deleted and deleted.id == uploaded.id
        with pytest.raises(openai.NotFoundError):
            await ai.files.retrieve(uploaded.id)
        # the batch keeps its lines; its files still read
        assert len(await lines_of(ai, batch.output_file_id)) == 3


async def test_list_pages_newest_first(upstreams: list[InProcessUpstream]) -> None:
    async with gateway(settings(), upstreams) as app, client(app) as ai:
        uploaded = await ai.files.create(file=("in.jsonl", jsonl([request(0)])), purpose="batch")
        ids = []
        for _ in range(5):
            made = await ai.batches.create(
                input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
            )
            ids.append(made.id)
        newest_first = ids[::-1]
        first = await ai.batches.list(limit=2)
        assert [b.id for b in first.data] == newest_first[:2] and first.has_more
        raw = (await ai.batches.with_raw_response.list(limit=2, after=ids[3])).http_response
        page = raw.json()
        assert [b["id"] for b in page["data"]] == newest_first[2:4]
        assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[2], ids[1], True)
        last = await ai.batches.list(limit=2, after=ids[1])
        assert [b.id for b in last.data] == [ids[0]] and not last.has_more
        assert [b.id async for b in ai.batches.list(limit=2)] == newest_first  # auto-paging
        with pytest.raises(openai.BadRequestError, match="names no batch"):
            await ai.batches.list(after="batch_nope")


async def test_cancel_answers_unfinished_lines(upstreams: list[InProcessUpstream]) -> None:
    upstreams[0].fault = Fault(delay_s=0.3)
    async with gateway(settings(), upstreams) as app, client(app) as ai:
        content = jsonl([request(i) for i in range(20)])
        uploaded = await ai.files.create(file=("in.jsonl", content), purpose="batch")
        made = await ai.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )
        cancelling = await ai.batches.cancel(made.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        with pytest.raises(openai.ConflictError, match="already cancelling"):
            await ai.batches.cancel(made.id)
        batch = await wait(ai, made.id, "cancelled")
        assert batch.cancelled_at is not None and batch.request_counts is not None
        assert batch.request_counts.total == 20
        errors = await lines_of(ai, batch.error_file_id)
        answered = await lines_of(ai, batch.output_file_id) if batch.output_file_id else []
        assert len(errors) + len(answered) == 20
        assert {ln["error"]["code"] for ln in errors} == {"batch_cancelled"}
        assert all(ln["response"] is None for ln in errors)
        assert [ln["custom_id"] for ln in errors] == sorted(
            (ln["custom_id"] for ln in errors), key=lambda c: int(c[1:])
        )
        with pytest.raises(openai.ConflictError, match="already cancelled"):
            await ai.batches.cancel(made.id)


async def test_unfinished_lines_expire(
    upstreams: list[InProcessUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("coe.batch.jobs.WINDOW_S", 1)
    upstreams[0].fault = Fault(delay_s=0.4)
    async with gateway(settings(), upstreams) as app, client(app) as ai:
        content = jsonl([request(i) for i in range(12)])
        uploaded = await ai.files.create(file=("in.jsonl", content), purpose="batch")
        made = await ai.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )
        await asyncio.sleep(1.1)  # nobody reads it meanwhile: the sweep moves it on
        runtime = app.state.runtime
        assert await runtime.batch_jobs.sweep() == 1
        assert await runtime.store.hget(keys.batch_job(made.id), "status") == "expired"
        batch = await ai.batches.retrieve(made.id)
        assert (
            batch.status == "expired"
            and batch.expired_at is not None
            and batch.expired_at >= made.created_at + 1
        )
        errors = await lines_of(ai, batch.error_file_id)
        assert errors and {ln["error"]["code"] for ln in errors} == {"batch_expired"}
        assert batch.request_counts is not None and batch.request_counts.failed == len(errors)


# -- bad input ---------------------------------------------------------------------------------
async def test_a_file_bad_as_a_whole_fails_the_batch(upstreams: list[InProcessUpstream]) -> None:
    async with gateway(settings(), upstreams) as app, client(app) as ai:
        cases = {
            "empty_file": b"\n  \n",
            "invalid_json_line": b"id,question\n1,what is 2+2\n",
        }
        for code, content in cases.items():
            uploaded = await ai.files.create(file=("bad.jsonl", content), purpose="batch")
            batch = await ai.batches.create(
                input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
            )
            assert Batch.model_validate(batch.model_dump()) == batch
            assert batch.status == "failed" and batch.failed_at is not None, code
            assert batch.errors is not None and batch.errors.data, code
            assert {e.code for e in batch.errors.data} == {code}
            assert batch.output_file_id is None and batch.error_file_id is None
            problems = batch.errors.data
        assert [e.line for e in problems] == [1, 2]
        assert "line 1 is not valid JSON" in (problems[0].message or "")


async def test_uploads_are_checked_and_parsed_off_the_event_loop(
    upstreams: list[InProcessUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, bool]] = []

    def spy(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            seen.append((fn.__name__, threading.get_ident() != loop_thread))
            return fn(*args)

        return wrapped

    monkeypatch.setattr("coe.gateway.files_api.decode_upload", spy(decode_upload))
    monkeypatch.setattr("coe.batch.jobs.read_batch_file", spy(read_batch_file))
    async with gateway(settings(), upstreams) as app, client(app) as ai:
        uploaded = await ai.files.create(file=("in.jsonl", jsonl([request(0)])), purpose="batch")
        made = await ai.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )
        await wait(ai, made.id, "completed")
    assert seen == [("decode_upload", True), ("read_batch_file", True)]


async def test_upload_and_create_errors_are_clear(upstreams: list[InProcessUpstream]) -> None:
    s = settings(batch_max_bytes=2048, batch_max_lines=3)
    async with gateway(s, upstreams) as app, client(app) as ai:
        with pytest.raises(openai.BadRequestError, match="purpose 'assistants' is not supported"):
            await ai.files.create(file=("in.jsonl", jsonl([request(0)])), purpose="assistants")
        too_big = jsonl([request(0)]) + b" " * 2048
        with pytest.raises(openai.APIStatusError, match="2048-byte limit") as big:
            await ai.files.create(file=("in.jsonl", too_big), purpose="batch")
        assert big.value.status_code == 413
        with pytest.raises(openai.APIStatusError, match="has 4 lines; the limit is 3") as many:
            await ai.files.create(
                file=("in.jsonl", jsonl([request(i) for i in range(4)])), purpose="batch"
            )
        assert many.value.status_code == 413
        assert [f async for f in ai.files.list()] == []  # nothing refused was kept

        good = await ai.files.create(file=("in.jsonl", jsonl([request(0)])), purpose="batch")
        bad_params: list[tuple[dict[str, Any], str]] = [
            ({"endpoint": "/v1/embeddings"}, "endpoint '/v1/embeddings' is not supported"),
            ({"completion_window": "48h"}, "completion_window '48h' is not supported"),
            ({"metadata": {f"k{i}": "v" for i in range(17)}}, "at most 16"),
        ]
        for change, message in bad_params:
            params: dict[str, Any] = {
                "input_file_id": good.id,
                "endpoint": CHAT,
                "completion_window": "24h",
                **change,
            }
            with pytest.raises(openai.BadRequestError, match=message):
                await ai.batches.create(**params)
        with pytest.raises(openai.NotFoundError, match="no file 'file-nope'"):
            await ai.batches.create(
                input_file_id="file-nope", endpoint=CHAT, completion_window="24h"
            )
        assert [b async for b in ai.batches.list()] == []


# -- ownership and rate limits ---------------------------------------------------------------
def keyed_settings() -> Settings:
    return settings(require_api_key=True, admin_token=TOKEN, dev_mode=False)


async def test_a_key_sees_only_its_own_files_and_batches(
    upstreams: list[InProcessUpstream],
) -> None:
    async with gateway(keyed_settings(), upstreams) as app:
        api_keys = app.state.runtime.api_keys
        _, secret_a = await api_keys.create("a", rate_limit_rpm=1000)
        _, secret_b = await api_keys.create("b", rate_limit_rpm=1000)
        async with (
            client(app, secret_a) as a,
            client(app, secret_b) as b,
            client(app, TOKEN) as admin,
        ):
            uploaded = await a.files.create(file=("in.jsonl", jsonl([request(0)])), purpose="batch")
            made = await a.batches.create(
                input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
            )
            done = await wait(a, made.id, "completed")
            assert done.output_file_id is not None
            calls = [
                b.files.retrieve(uploaded.id),
                b.files.content(uploaded.id),
                b.files.delete(uploaded.id),
                b.files.retrieve(done.output_file_id),
                b.files.content(done.output_file_id),
                b.batches.retrieve(made.id),
                b.batches.cancel(made.id),
                b.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"),
            ]
            for call in calls:
                with pytest.raises(openai.NotFoundError):
                    await call
            assert [f async for f in b.files.list()] == []
            assert [x async for x in b.batches.list()] == []
            mine = {f.id async for f in a.files.list()}
            assert mine == {uploaded.id, done.output_file_id}
            assert [x.id async for x in a.batches.list()] == [made.id]
            # the admin token sees everyone's
            assert {f.id async for f in admin.files.list()} == mine
            assert (await admin.batches.retrieve(made.id)).status == "completed"
            with pytest.raises(openai.AuthenticationError):
                await client(app, "coe-sk-wrong").files.list()


async def test_a_batch_spends_one_request_per_line(upstreams: list[InProcessUpstream]) -> None:
    if time.time() % 60 > 50:  # one per-minute window for the whole test
        await asyncio.sleep(61 - time.time() % 60)
    async with gateway(keyed_settings(), upstreams) as app:
        _, secret = await app.state.runtime.api_keys.create("small", rate_limit_rpm=11)
        async with client(app, secret) as ai:
            big = await ai.files.create(
                file=("big.jsonl", jsonl([request(i) for i in range(12)])), purpose="batch"
            )
            with pytest.raises(openai.RateLimitError, match="a batch of 12 lines counts as 12"):
                await ai.batches.create(
                    input_file_id=big.id, endpoint=CHAT, completion_window="24h"
                )
            six = jsonl([request(i) for i in range(6)])
            small = await ai.files.create(file=("six.jsonl", six), purpose="batch")
            # 3 calls so far, then 6 lines (the create call is one of them): 9 of 11
            await ai.batches.create(input_file_id=small.id, endpoint=CHAT, completion_window="24h")
            with pytest.raises(openai.RateLimitError, match="the key has 1 left this minute"):
                await ai.batches.create(
                    input_file_id=small.id, endpoint=CHAT, completion_window="24h"
                )
            # the refused batch spent nothing beyond its own call: one request is left
            answer = await ai.chat.completions.create(
                model="e0", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content == "[e0] hi"
            with pytest.raises(openai.RateLimitError):
                await ai.chat.completions.create(
                    model="e0", messages=[{"role": "user", "content": "hi"}]
                )


# -- the older upload form -------------------------------------------------------------------
async def test_the_upload_alias_creates_a_batch_over_a_file(
    upstreams: list[InProcessUpstream],
) -> None:
    async with gateway(settings(batch_max_lines=5), upstreams) as app, asgi_client(app) as c:
        r = await c.post("/v1/batches", files={"file": ("in.jsonl", jsonl([request(0), "{x"]))})
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["input_file_id"].startswith("file-")
        async with client(app) as ai:
            await wait(ai, job["id"], "completed")
        results = (await c.get(f"/v1/batches/{job['id']}/results")).text.splitlines()
        assert [json.loads(ln)["custom_id"] for ln in results] == ["q0", "line-2"]
        body = await c.post(
            "/v1/batches",
            content=jsonl([request(1)]),
            headers={"content-type": "application/jsonl"},
        )
        assert body.status_code == 201, body.text
        empty = await c.post(
            "/v1/batches", content=b"\n\n", headers={"content-type": "application/jsonl"}
        )
        assert empty.status_code == 400 and "no requests" in empty.json()["error"]["message"]
        many = await c.post(
            "/v1/batches", files={"file": ("in.jsonl", jsonl([request(i) for i in range(6)]))}
        )
        assert many.status_code == 413 and "the limit is 5" in many.json()["error"]["message"]
        assert (await c.get("/v1/batches/batch_nope/results")).status_code == 404


def test_the_cli_drives_the_same_endpoints(
    tmp_path: Path, upstreams: list[InProcessUpstream]
) -> None:
    app = create_app(settings(), config_for(upstreams), transport=route_to(*upstreams))
    server = ServedApp(app).start()
    try:
        src = tmp_path / "in.jsonl"
        src.write_bytes(jsonl([request(0), request(1, model="nope"), request(2)]))
        url = ["--url", server.base_url]

        def coe(*args: str) -> str:
            out = CliRunner().invoke(main, ["batch", *args, *url])
            assert out.exit_code == 0, out.output
            return out.stdout

        job = json.loads(coe("submit", str(src), "-m", "team=search"))
        assert job["status"] == "in_progress" and job["metadata"] == {"team": "search"}
        deadline = time.monotonic() + 20
        while json.loads(coe("status", job["id"]))["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        out = tmp_path / "answers.jsonl"
        coe("results", job["id"], "-o", str(out))
        answers = [json.loads(line) for line in out.read_text().splitlines()]
        errors = [
            json.loads(line) for line in out.with_suffix(".errors.jsonl").read_text().splitlines()
        ]
        assert [a["custom_id"] for a in answers] == ["q0", "q2"]
        assert [e["custom_id"] for e in errors] == ["q1"]
        refused = CliRunner().invoke(main, ["batch", "cancel", job["id"], *url])
        assert refused.exit_code != 0 and "already completed" in refused.output
    finally:
        server.stop()


# -- retention on Redis ------------------------------------------------------------------------
@pytest.mark.redis
async def test_finished_batches_and_files_expire(upstreams: list[InProcessUpstream]) -> None:
    prefix = f"coe-test-retention:{uuid.uuid4().hex[:10]}:"
    s = settings(
        redis_url=REDIS_URL, store_prefix=prefix, batch_worker=True, batch_retention_s=5000
    )
    r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        async with gateway(s, upstreams) as app, client(app) as ai:
            content = jsonl([request(0), request(1, model="nope")])
            uploaded = await ai.files.create(file=("in.jsonl", content), purpose="batch")
            made = await ai.batches.create(
                input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
            )
            running = await r.ttl(f"{prefix}batch:{made.id}")
            assert 5000 < running <= 24 * 3600 + 5000  # a job nobody reads again still goes
            batch = await wait(ai, made.id, "completed")
            assert uploaded.expires_at == uploaded.created_at + 5000
            names = [k async for k in r.scan_iter(match=f"{prefix}*")]
            job_keys = [k for k in names if k.startswith(f"{prefix}batch:{made.id}")]
            file_keys = [
                k
                for k in names
                if any(f in k for f in (uploaded.id, batch.output_file_id, batch.error_file_id))
            ]
            assert len(job_keys) >= 5 and len(file_keys) == 4  # meta + content, 2 output metas
            for key in [*job_keys, *file_keys, f"{prefix}files", f"{prefix}batch:listing"]:
                ttl = await r.ttl(key)  # -1: no time to live; -2: gone already
                assert ttl != -1 and ttl <= 24 * 3600 + 5000, (key, ttl)
                if key in job_keys or key in file_keys:
                    assert ttl <= 5000, (key, ttl)
    finally:
        await r.aclose()
        delete_prefix(REDIS_URL, prefix)
