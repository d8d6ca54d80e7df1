"""The one place exceptions become OpenAI-shaped error responses.

An expert's failure reaches the client as the expert, the kind of failure and the request id;
the details (URLs, upstream bodies) go to the log at WARNING under that request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from coe.errors import (
    CoeError,
    RateLimited,
    Unauthorized,
    UpstreamError,
    error_body,
)
from coe.observability.logs import current_request_id
from coe.protocol import validation_message

log = logging.getLogger(__name__)


def openai_error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_body(message, type_, param=param, code=code)
    return JSONResponse(body, status_code=status, headers=headers)


def client_error(err: CoeError, request_id: str | None = None) -> dict[str, Any]:
    """The OpenAI error body a client gets for `err`: an expert's failure also names the
    request id, so a user can quote it and an operator find the details in the log."""
    body = err.to_openai()
    rid = request_id or current_request_id()
    if isinstance(err, UpstreamError) and rid:
        body["error"]["message"] = f"{err.message} (request id {rid})"
    return body


def log_failure(err: CoeError, what: str = "request failed") -> None:
    """What the client was not told, at WARNING (the request id rides on the record)."""
    if isinstance(err, UpstreamError):
        log.warning("%s: %s: %s", what, type(err).__name__, err.detail)
    elif err.status_code >= 500:
        log.warning("%s: %s: %s", what, type(err).__name__, err.message)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CoeError)
    async def _coe(request: Request, err: CoeError) -> JSONResponse:
        log_failure(err)
        rid = getattr(request.state, "request_id", None)
        headers = {}
        if isinstance(err, RateLimited):
            headers["retry-after"] = str(err.retry_after_s)
        elif isinstance(err, Unauthorized):
            headers["www-authenticate"] = "Bearer"
        return JSONResponse(client_error(err, rid), status_code=err.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(err.errors()))
        return openai_error(400, message, "invalid_request_error", param=param)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, err: ValidationError) -> JSONResponse:
        message, param = validation_message(list(err.errors()))
        return openai_error(400, message, "invalid_request_error", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return openai_error(err.status_code, str(err.detail), type_, headers=err.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, err: ClientDisconnect) -> Response:
        # The client closed the connection before its body was read (it gave up waiting):
        # nobody is left to answer, and a traceback per request would only add load.
        log.info("client went away before its request was read: %s", request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return openai_error(500, "Internal server error", "server_error")
