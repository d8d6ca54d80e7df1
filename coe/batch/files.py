"""Files as OpenAI's /v1/files serves them: uploads kept in the store (a metadata hash and
the text, both expiring after the retention period) and the output and error files of
finished batches, whose lines are read from the batch's results when asked for.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from coe.errors import InvalidRequest, NotFound
from coe.store import keys
from coe.store.base import Store

UPLOAD_PURPOSES = ("batch",)  # what may be uploaded; batches write "batch_output" files


def check_purpose(purpose: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose {purpose!r} is not supported; upload batch input with purpose 'batch'",
            param="purpose",
        )


PART_CHARS = 1 << 20  # an uploaded file is stored in parts of this many characters


class BatchFiles:
    def __init__(self, store: Store, retention_s: float):
        self.store = store
        self.retention_s = retention_s

    async def create(
        self, text: str, size: int, filename: str, purpose: str = "batch", owner: str = ""
    ) -> dict[str, Any]:
        """Store an uploaded file (`size`: its length in bytes); returns its FileObject."""
        check_purpose(purpose)
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        # In parts, one store call each: a 50 MiB value in one command would hold the event
        # loop (and every chat request on it) while the client encodes it.
        content = keys.file_content(file_id)
        for n, start in enumerate(range(0, max(len(text), 1), PART_CHARS)):
            await self.store.hset(content, {str(n): text[start : start + PART_CHARS]})
        await self.store.expire(content, self.retention_s)
        return await self._add(file_id, size, filename, purpose, owner, {})

    async def add_output(
        self, file_id: str, job_id: str, kind: str, size: int, owner: str
    ) -> dict[str, Any]:
        """Record a batch's output or error file; its lines stay in the batch's results."""
        name = f"{job_id}_{kind}.jsonl"
        return await self._add(
            file_id, size, name, "batch_output", owner, {"job": job_id, "kind": kind}
        )

    async def _add(
        self,
        file_id: str,
        size: int,
        filename: str,
        purpose: str,
        owner: str,
        extra: dict[str, str],
    ) -> dict[str, Any]:
        created = time.time_ns()
        meta = {
            "id": file_id,
            "bytes": str(size),
            "created_at": str(created // 1_000_000_000),
            "filename": filename,
            "purpose": purpose,
            "owner": owner,
            **extra,
        }
        await self.store.hset(keys.file_meta(file_id), meta)
        await self.store.expire(keys.file_meta(file_id), self.retention_s)
        entry = {"t": created, "owner": owner, "purpose": purpose}
        await self.store.hset(keys.FILES, {file_id: json.dumps(entry)})
        await self.store.expire(keys.FILES, self.retention_s)  # gone once nothing is left
        return self.public(meta)

    async def meta(self, file_id: str, owner: str | None = None) -> dict[str, str]:
        """A file's stored record; 404 when it is missing or belongs to another key."""
        meta = await self.store.hgetall(keys.file_meta(file_id))
        if not meta or (owner is not None and meta.get("owner", "") != owner):
            raise NotFound(f"no file {file_id!r}", param="file_id")
        return meta

    async def get(self, file_id: str, owner: str | None = None) -> dict[str, Any]:
        return self.public(await self.meta(file_id, owner))

    async def text(self, file_id: str) -> str:
        """An uploaded file's text (batch output files are read from their batch)."""
        content = keys.file_content(file_id)
        parts = []
        for n in range(await self.store.hlen(content)):
            part = await self.store.hget(content, str(n))
            if part is None:
                break
            parts.append(part)
        if not parts:
            raise NotFound(f"file {file_id!r} has no stored content", param="file_id")
        return "".join(parts)

    async def delete(self, file_id: str, owner: str | None = None) -> dict[str, Any]:
        await self.meta(file_id, owner)
        await self.store.delete(keys.file_meta(file_id), keys.file_content(file_id))
        await self.store.hdel(keys.FILES, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def list(
        self,
        owner: str | None = None,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
        newest_first: bool = True,
    ) -> tuple[list[dict[str, Any]], bool]:
        index = await self.store.hgetall(keys.FILES)
        entries = []
        for file_id, raw in index.items():
            entry = json.loads(raw)
            if owner is not None and entry["owner"] != owner:
                continue
            if purpose is not None and entry["purpose"] != purpose:
                continue
            entries.append((int(entry["t"]), file_id))

        async def load(file_id: str) -> dict[str, Any] | None:
            meta = await self.store.hgetall(keys.file_meta(file_id))
            if not meta:  # expired: drop it from the index too
                await self.store.hdel(keys.FILES, file_id)
                return None
            return self.public(meta)

        return await list_page(entries, load, after, limit, newest_first, "file")

    def public(self, meta: dict[str, str]) -> dict[str, Any]:
        """OpenAI's FileObject; `expires_at` is when retention removes it."""
        created = int(meta["created_at"])
        return {
            "id": meta["id"],
            "object": "file",
            "bytes": int(meta["bytes"]),
            "created_at": created,
            "expires_at": created + int(self.retention_s),
            "filename": meta["filename"],
            "purpose": meta["purpose"],
            "status": "processed",
            "status_details": None,
        }


async def list_page(
    entries: list[tuple[int, str]],
    load: Callable[[str], Awaitable[dict[str, Any] | None]],
    after: str | None,
    limit: int,
    newest_first: bool,
    what: str,
) -> tuple[list[dict[str, Any]], bool]:
    """One page of a cursor-paginated list: the objects after `after` (an id) in creation
    order, `limit` at most, and whether more follow. `load` returns None for an object gone
    since the index was read (it is skipped)."""
    entries.sort(reverse=newest_first)
    start = 0
    if after is not None:
        ids = [entry_id for _, entry_id in entries]
        if after not in ids:
            raise InvalidRequest(f"after={after!r} names no {what} in this list", param="after")
        start = ids.index(after) + 1
    page: list[dict[str, Any]] = []
    for _, entry_id in entries[start:]:
        item = await load(entry_id)
        if item is None:
            continue
        if len(page) == limit:
            return page, True
        page.append(item)
    return page, False
