"""FastAPI dependencies: handlers get services through these, never through globals."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from coe.gateway.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def request_id(request: Request) -> str:
    """The id the request-context middleware gave this request (or a fresh one)."""
    rid = getattr(request.state, "request_id", None)
    if not rid:
        rid = f"req-{uuid.uuid4().hex[:20]}"
        request.state.request_id = rid
    return str(rid)


ServicesDep = Annotated[Services, Depends(get_services)]
RequestIdDep = Annotated[str, Depends(request_id)]
