"""FastAPI dependencies: handlers get services through these, never through globals."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import Depends, Request

from coe.gateway.services import Services

_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def request_id(request: Request) -> str:
    """The caller's X-Request-Id when it is sane, else a new one."""
    incoming = request.headers.get("x-request-id", "")
    rid = incoming if _SAFE_ID.match(incoming) else f"req-{uuid.uuid4().hex[:20]}"
    request.state.request_id = rid
    return rid


ServicesDep = Annotated[Services, Depends(get_services)]
RequestIdDep = Annotated[str, Depends(request_id)]
