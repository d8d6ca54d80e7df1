"""/v1/files as OpenAI serves it, for batch input and output: upload, list, retrieve, read,
delete. With API keys on, a key sees only its own files (others answer 404); the admin
token sees every file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from coe.batch import decode_upload
from coe.batch.files import check_purpose
from coe.errors import InvalidRequest, PayloadTooLarge
from coe.gateway.auth import client_key
from coe.security import ApiKey, token_matches
from coe.web.auth import bearer
from coe.web.deps import RuntimeDep

router = APIRouter(prefix="/v1/files", tags=["files"])


@dataclass(frozen=True)
class Caller:
    """Who is calling: an API key, or None for the admin token (or keys off): sees all."""

    key: ApiKey | None

    @property
    def owner(self) -> str:
        """What new files and batches record as their owner."""
        return self.key.id if self.key is not None else ""

    @property
    def scope(self) -> str | None:
        """Whose files and batches it may see: its own, or (None) everyone's."""
        return self.key.id if self.key is not None else None


async def caller(request: Request, runtime: RuntimeDep) -> Caller:
    if runtime.settings.require_api_key and token_matches(bearer(request), runtime.admin_token):
        return Caller(None)
    return Caller(await client_key(request, runtime))


CallerDep = Annotated[Caller, Depends(caller)]


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str, str | None]:
    """A multipart upload: (content, filename, purpose); the body is streamed to disk by
    the form parser, and no more than `max_bytes` + 1 bytes are read back."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("upload a file as multipart/form-data with a `file` field")
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InvalidRequest("multipart upload needs a `file` field", param="file")
    purpose = form.get("purpose")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"file exceeds the {max_bytes}-byte limit for batch input")
    return data, upload.filename or "upload.jsonl", purpose if isinstance(purpose, str) else None


async def store_upload(
    runtime: RuntimeDep, content: bytes, filename: str, purpose: str, owner: str
) -> dict[str, Any]:
    """Check an upload's size, encoding and line count off the event loop, then keep it."""
    settings = runtime.settings
    text = await asyncio.to_thread(
        decode_upload, content, settings.batch_max_bytes, settings.batch_max_lines
    )
    files = runtime.batch_jobs.files
    return await files.create(text, len(content), filename, purpose, owner)


UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


@router.post("", openapi_extra=UPLOAD_DOC)
async def create_file(request: Request, runtime: RuntimeDep, who: CallerDep) -> dict[str, Any]:
    content, filename, purpose = await read_upload(request, runtime.settings.batch_max_bytes)
    if purpose is None:
        raise InvalidRequest("multipart upload needs a `purpose` field ('batch')", param="purpose")
    check_purpose(purpose)  # before the content is decoded and counted
    return await store_upload(runtime, content, filename, purpose, who.owner)


@router.get("")
async def list_files(
    runtime: RuntimeDep,
    who: CallerDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    data, has_more = await runtime.batch_jobs.files.list(
        who.scope, purpose, after, limit, newest_first=order == "desc"
    )
    return page(data, has_more)


@router.get("/{file_id}")
async def get_file(file_id: str, runtime: RuntimeDep, who: CallerDep) -> dict[str, Any]:
    return await runtime.batch_jobs.files.get(file_id, who.scope)


@router.get("/{file_id}/content")
async def file_content(file_id: str, runtime: RuntimeDep, who: CallerDep) -> StreamingResponse:
    pieces = runtime.batch_jobs.file_content(file_id, who.scope)
    first = await anext(pieces, "")  # a missing file is a 404 before the stream starts

    async def body() -> AsyncIterator[bytes]:
        yield first.encode()
        async for piece in pieces:
            yield piece.encode()

    return StreamingResponse(body(), media_type="application/jsonl")


@router.delete("/{file_id}")
async def delete_file(file_id: str, runtime: RuntimeDep, who: CallerDep) -> dict[str, Any]:
    return await runtime.batch_jobs.files.delete(file_id, who.scope)


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
