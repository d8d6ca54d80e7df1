"""Request ids: the one a client sent when it is safe to log and echo, else a new one."""

from __future__ import annotations

import re
import uuid

_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:20]}"


def request_id_for(incoming: str | None) -> str:
    """The client's `x-request-id` if it is a safe token, otherwise a fresh id."""
    return incoming if incoming and _SAFE_ID.match(incoming) else new_request_id()
