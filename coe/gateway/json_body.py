"""Routes whose typed body is read as a JSON object whatever its content-type says, with
the gateway's own messages for a body that is empty, not JSON or not an object; FastAPI
then validates it against the endpoint's wire model (`coe.protocol`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from coe.errors import InvalidRequest, PayloadTooLarge

JSON_TYPE = (b"content-type", b"application/json")


def json_object(body: bytes) -> dict[str, Any]:
    """`body` as a JSON object, or the 400 that says what is wrong with it."""
    if not body:
        raise InvalidRequest("Request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidRequest(f"Request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"Request body must be a JSON object, not {type(data).__name__}")
    return data


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body of a request whose route reads it by hand (one that takes other media types
    too) as a JSON object, within `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"Request body of {declared} bytes exceeds the {max_bytes}-byte limit"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"Request body exceeds the {max_bytes}-byte limit")
    return json_object(bytes(body))


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class BoundedBodyRoute(APIRoute):
    """Reads the body before FastAPI does, so that one over the middleware's byte limit is
    its 413, not FastAPI's 400 "There was an error parsing the body"."""

    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            await request.body()  # cached: FastAPI reads the same bytes
            return await handle(request)

        return bounded


class JsonBodyRoute(APIRoute):
    """Reads the body (its size bounded by the request-context middleware), checks it is a
    JSON object and validates it against the endpoint's model as a plain object, so that a
    bad field gets the same message as a hand-parsed body did (FastAPI's own validation also
    accepts objects with attributes, and words a wrong type so); FastAPI then parses it."""

    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()
        models = [
            p.field_info.annotation
            for p in self.dependant.body_params
            if isinstance(p.field_info.annotation, type)
            and issubclass(p.field_info.annotation, BaseModel)
        ]

        async def checked(request: Request) -> Response:
            data = json_object(await request.body())  # cached: FastAPI reads the same bytes
            for model in models:
                model.model_validate(data)  # a ValidationError is the app's 400
            headers = request.scope["headers"]
            request.scope["headers"] = [
                *[(k, v) for k, v in headers if k.lower() != b"content-type"],
                JSON_TYPE,
            ]
            return await handle(request)

        return checked
