"""/v1/batches as OpenAI serves it: create a batch from an uploaded file, retrieve, list,
cancel. The older upload form (the JSONL itself, multipart `file` or the body) stays as an
alias that uploads the file and creates the batch in one call; `/results` gives every
result line so far, output and errors together, in input order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from coe.batch.jobs import Spend
from coe.errors import InvalidRequest, PayloadTooLarge, RateLimited
from coe.gateway.files_api import Caller, CallerDep, page, read_upload, store_upload
from coe.gateway.json_body import read_json
from coe.runtime import Runtime
from coe.web.deps import RuntimeDep

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI fields are accepted, not used

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/jsonl": {"schema": {"type": "string"}},
        },
    }
}


def _spender(runtime: Runtime, who: Caller) -> Spend | None:
    """A batch's lines count against its key's per-minute budget (the call itself is one)."""
    key = who.key
    if key is None:
        return None

    async def spend(lines: int) -> None:
        try:
            await runtime.api_keys.spend(key, lines, f"a batch of {lines} lines", counted=1)
        except RateLimited:
            runtime.metrics.rate_limited.inc()
            raise

    return spend


@router.post("", openapi_extra=CREATE_DOC)
async def create_batch(request: Request, runtime: RuntimeDep, who: CallerDep) -> JSONResponse:
    """JSON: OpenAI's create (200). Otherwise the file itself (201): the alias."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        params = BatchCreate.model_validate(
            await read_json(request, runtime.settings.max_body_bytes)
        )
        batch = await runtime.batch_jobs.create(
            params.input_file_id,
            endpoint=params.endpoint,
            completion_window=params.completion_window,
            metadata=params.metadata,
            owner=who.owner,
            spend=_spender(runtime, who),
        )
        return JSONResponse(batch)
    content, name = await _upload(request, runtime.settings.batch_max_bytes)
    file = await store_upload(runtime, content, name, "batch", who.owner)
    batch = await runtime.batch_jobs.create(
        file["id"], owner=who.owner, spend=_spender(runtime, who)
    )
    if batch["status"] == "failed":
        raise InvalidRequest(batch["errors"]["data"][0]["message"])
    return JSONResponse(batch, status_code=201)


async def _upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        content, name, _ = await read_upload(request, max_bytes)
        return content, name
    buffer = bytearray()
    async for chunk in request.stream():
        buffer += chunk
        if len(buffer) > max_bytes:
            raise PayloadTooLarge(f"batch file exceeds the {max_bytes}-byte limit")
    return bytes(buffer), "body.jsonl"


@router.get("")
async def list_batches(
    runtime: RuntimeDep,
    who: CallerDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    data, has_more = await runtime.batch_jobs.list(who.scope, after, limit)
    return page(data, has_more)


@router.get("/{batch_id}")
async def get_batch(batch_id: str, runtime: RuntimeDep, who: CallerDep) -> dict[str, Any]:
    return await runtime.batch_jobs.retrieve(batch_id, who.scope)


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, runtime: RuntimeDep, who: CallerDep) -> dict[str, Any]:
    return await runtime.batch_jobs.cancel(batch_id, who.scope)


@router.get("/{batch_id}/results")
async def batch_results(batch_id: str, runtime: RuntimeDep, who: CallerDep) -> StreamingResponse:
    await runtime.batch_jobs.retrieve(batch_id, who.scope)  # 404 before the stream starts

    async def lines() -> AsyncIterator[bytes]:
        async for line in runtime.batch_jobs.results(batch_id, who.scope):
            yield (json.dumps(line, ensure_ascii=False) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/jsonl")
