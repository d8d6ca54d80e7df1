"""FastAPI dependencies: handlers get the runtime and their request id through these, never
through globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from coe.runtime import Runtime
from coe.web.request_ids import new_request_id


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def request_id(request: Request) -> str:
    """The id the request-context middleware gave this request (or a fresh one)."""
    rid = getattr(request.state, "request_id", None)
    if not rid:
        rid = new_request_id()
        request.state.request_id = rid
    return str(rid)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
RequestIdDep = Annotated[str, Depends(request_id)]
