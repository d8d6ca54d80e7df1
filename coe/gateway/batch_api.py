"""/v1/batches: submit a JSONL file of chat requests, poll it, fetch results, cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from coe.batch import parse_batch_file
from coe.errors import InvalidRequest, PayloadTooLarge
from coe.gateway.deps import RuntimeDep

router = APIRouter(prefix="/v1/batches", tags=["batches"])

UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
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


async def _upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("multipart upload needs a `file` field", param="file")
        data = await upload.read(max_bytes + 1)
        name = upload.filename or "upload.jsonl"
    else:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) > max_bytes:
                break
        data = bytes(buffer)
        name = "body.jsonl"
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"batch file exceeds the {max_bytes}-byte limit")
    return bytes(data), name


@router.post("", status_code=201, openapi_extra=UPLOAD_DOC)
async def create_batch(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    settings = runtime.settings
    content, name = await _upload(request, settings.batch_max_bytes)
    lines = parse_batch_file(content, settings.batch_max_bytes, settings.batch_max_lines)
    return await runtime.batch_jobs.create(lines, source=name)


@router.get("/{batch_id}")
async def get_batch(batch_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await runtime.batch_jobs.status(batch_id)


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await runtime.batch_jobs.cancel(batch_id)


@router.get("/{batch_id}/results")
async def batch_results(batch_id: str, runtime: RuntimeDep) -> StreamingResponse:
    await runtime.batch_jobs.status(batch_id)  # 404 before the stream starts

    async def lines() -> AsyncIterator[bytes]:
        async for line in runtime.batch_jobs.results(batch_id):
            yield (json.dumps(line, ensure_ascii=False) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/jsonl")
