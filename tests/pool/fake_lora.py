"""A vLLM LoRA server in miniature, for the pool service's tests: adapters loaded and unloaded
at run time (the real `lora` controller drives it), chat answered by the adapter named.

It refuses to hold more than `max_loras` adapters and records the most it ever held, so a
test sees an overcommitted device; streams can be held open after their first chunk.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

BASE = "base"


@dataclass
class LoraServer:
    name: str = "lora"
    max_loras: int = 2
    loaded: set[str] = field(default_factory=set)
    peak: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)  # loading these answers 500
    gate: threading.Event = field(default_factory=threading.Event)  # cleared: streams pause
    answered: list[str] = field(default_factory=list)  # the model of every chat answered

    def __post_init__(self) -> None:
        self.gate.set()
        self.app = make_lora_app(self)

    @property
    def base_url(self) -> str:
        """Where the in-process tier mounts it."""
        return f"http://{self.name}.test"

    def loads(self) -> list[str]:
        return [a for op, a in self.log if op == "load"]


def _error(status: int, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "BadRequestError", "code": status}}
    return JSONResponse(body, status_code=status)


def make_lora_app(state: LoraServer) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = [BASE, *sorted(state.loaded)]
        return {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> Response:
        name = (await request.json())["lora_name"]
        state.log.append(("load", name))
        await asyncio.sleep(0.02)
        if name in state.fail:
            return Response(f"cannot load {name}: injected failure", status_code=500)
        if name in state.loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        state.loaded.add(name)
        state.peak = max(state.peak, len(state.loaded))
        return Response(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> Response:
        name = (await request.json())["lora_name"]
        state.log.append(("unload", name))
        await asyncio.sleep(0.02)
        if name not in state.loaded:
            return _error(404, f"The lora adapter '{name}' cannot be found.")
        state.loaded.discard(name)
        return Response(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        model = body.get("model")
        if model != BASE and model not in state.loaded:
            return _error(404, f"The model `{model}` does not exist.")
        state.answered.append(model)
        words = [f"[{model}]", "one", "two", "three"]
        if not body.get("stream"):
            message = {"role": "assistant", "content": " ".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse({"object": "chat.completion", "model": model, "choices": [choice]})
        return StreamingResponse(_chunks(state, model, words), media_type="text/event-stream")

    return app


async def _chunks(state: LoraServer, model: str, words: list[str]) -> Any:
    for i, word in enumerate(words):
        if i == 1:
            # A threading.Event, so tests can steer it from any thread: polled.
            while not state.gate.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        delta = {"content": word + " "}
        chunk = {"object": "chat.completion.chunk", "model": model, "choices": [{"delta": delta}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"
