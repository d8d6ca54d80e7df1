"""An OpenAI-compatible server that fails on demand: timeouts, 5xx, cut or stalled streams.

For fault injection and overhead benchmarks only; the real-model tests use vLLM.
Faults are set in-process (`server.fault = Fault(...)`) or over HTTP
(`POST /_fault` with the same fields), so another process can steer it too.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from coe.testing._runner import ThreadedServer

Mode = Literal["ok", "status", "hang", "cut", "stall", "garbage"]


@dataclass
class Fault:
    mode: Mode = "ok"
    status: int = 500
    delay_s: float = 0.0  # before answering (or before the first chunk)
    cut_after: int = 2  # chunks sent before a `cut` or `stall`
    times: int | None = None  # fault the next N requests, then answer normally
    fail_rate: float = 0.0  # with mode != ok: fault only this fraction (0 = always)


@dataclass
class UpstreamState:
    name: str
    fault: Fault = field(default_factory=Fault)
    requests: int = 0
    inflight: int = 0
    max_inflight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    keep_bodies: int = 50
    reply: str | None = None  # a fixed answer to every request, instead of the echo

    def next_fault(self) -> Fault:
        self.requests += 1
        f = self.fault
        if f.mode == "ok":
            return f
        if f.times is not None:
            if f.times <= 0:
                return Fault(delay_s=f.delay_s)
            f.times -= 1
        if f.fail_rate and (self.requests * 0.6180339887) % 1.0 >= f.fail_rate:
            return Fault(delay_s=f.delay_s)
        return f


def _reply_text(state: UpstreamState, body: dict[str, Any]) -> str:
    if state.reply is not None:
        return state.reply
    messages = body.get("messages") or []
    last: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last.get("content")
    text = content if isinstance(content, str) else json.dumps(content)
    return f"[{state.name}] {text[:200]}"


def make_fake_app(state: UpstreamState) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.name, "object": "model"}]}

    @app.post("/_fault")
    async def set_fault(request: Request) -> dict[str, Any]:
        state.fault = Fault(**(await request.json()))
        return asdict(state.fault)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        state.inflight += 1
        state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            return await _answer(request)
        finally:
            state.inflight -= 1

    async def _answer(request: Request) -> Response:
        body = await request.json()
        state.bodies = [*state.bodies[-(state.keep_bodies - 1) :], body]
        fault = state.next_fault()
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.mode == "status":
            return JSONResponse(
                {"error": {"message": f"injected {fault.status}", "type": "server_error"}},
                status_code=fault.status,
            )
        if fault.mode == "hang":
            await asyncio.sleep(3600)
        if fault.mode == "garbage":
            return Response("this is not json", media_type="application/json")
        text = _reply_text(state, body)
        if body.get("stream"):
            return StreamingResponse(
                _chunks(state, body, text, fault), media_type="text/event-stream"
            )
        words = text.split(" ")
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", state.name),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": len(words),
                    "total_tokens": 5 + len(words),
                },
            }
        )

    return app


async def _chunks(
    state: UpstreamState, body: dict[str, Any], text: str, fault: Fault
) -> AsyncIterator[bytes]:
    cid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
    base = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", state.name),
    }
    pieces = [w + " " for w in text.split(" ")]
    for i, piece in enumerate(pieces):
        if fault.mode in ("cut", "stall") and i == fault.cut_after:
            if fault.mode == "stall":
                await asyncio.sleep(3600)
            return  # the connection closes without [DONE]
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await asyncio.sleep(0)
    final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield f"data: {json.dumps(final)}\n\n".encode()
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": len(pieces),
                "total_tokens": 5 + len(pieces),
            },
        }
        yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"


class FakeUpstream:
    """The fake server on a loopback port, served by uvicorn from a background thread."""

    def __init__(self, name: str = "fake", port: int = 0, host: str = "127.0.0.1"):
        self.state = UpstreamState(name=name)
        self._server = ThreadedServer(make_fake_app(self.state), host, port, lifespan="off")

    @property
    def fault(self) -> Fault:
        return self.state.fault

    @fault.setter
    def fault(self, value: Fault) -> None:
        self.state.fault = value

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def start(self, timeout_s: float = 30) -> FakeUpstream:
        self._server.start(timeout_s)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """`python -m coe.testing --port 8301 --name fast`: serve the fake upstream in this process."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    args = parser.parse_args()
    app = make_fake_app(UpstreamState(name=args.name))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
