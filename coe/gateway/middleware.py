"""Per-request plumbing as plain ASGI: request ids, metrics, body limits, slow clients, and
admission: past `max_in_flight` chat and route requests, more are refused at once (503
with Retry-After), so an overloaded gateway sheds load instead of queueing requests whose
clients gave up long ago."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe.dispatch.timing import UpstreamClock, measure_upstream, stop_measuring
from coe.errors import PayloadTooLarge, RequestTimeout, error_body
from coe.observability import Metrics, bind_request_id
from coe.observability.logs import reset_request_id
from coe.web.request_ids import request_id_for

log = logging.getLogger(__name__)
ADMITTED = ("/v1/chat/completions", "/v1/route")  # the paths that route and call experts


def _error(status: int, message: str, type_: str, code: str) -> bytes:
    return json.dumps(error_body(message, type_, code=code)).encode()


class RequestContext:
    """Assigns the request id, counts and times every request, enforces body limits."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        body_timeout_s: float,
        upload_max_bytes: int | None = None,
        max_header_bytes: int = 16 * 1024,
        max_in_flight: int = 256,
    ):
        self.app = app
        self.max_in_flight = max_in_flight
        self.admitted = 0  # chat and route requests being served now
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.upload_max_bytes = upload_max_bytes or max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_header_bytes = max_header_bytes

    @staticmethod
    def is_upload(path: str) -> bool:
        """Batch uploads may be larger than chat requests, and bound what they read."""
        return path.startswith(("/v1/batches", "/v1/files"))

    def limit_for(self, path: str) -> int:
        return self.upload_max_bytes if self.is_upload(path) else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = request_id_for(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid
        token = bind_request_id(rid)
        status = 500
        started = time.perf_counter()
        upstream: UpstreamClock | None = None  # time spent waiting on experts, when routed
        self.metrics.in_flight.inc()

        async def send_wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *[(k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"],
                    (b"x-request-id", rid.encode()),
                ]
            await send(message)

        try:
            head_bytes = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if head_bytes > self.max_header_bytes:
                await self._reject(
                    send_wrapped,
                    431,
                    _error(
                        431,
                        f"Request headers of {head_bytes} bytes exceed the "
                        f"{self.max_header_bytes}-byte limit",
                        "invalid_request_error",
                        "headers_too_large",
                    ),
                )
                return
            declared = headers.get("content-length", "")
            path = scope.get("path", "")
            limit = self.limit_for(path)
            if declared.isdigit() and int(declared) > limit:
                await self._reject(
                    send_wrapped,
                    413,
                    _error(
                        413,
                        f"Request body of {declared} bytes exceeds the {limit}-byte limit",
                        "invalid_request_error",
                        "payload_too_large",
                    ),
                )
                return
            admit = scope.get("path", "") in ADMITTED
            if admit and self.admitted >= self.max_in_flight:
                await self._reject(
                    send_wrapped,
                    503,
                    _error(
                        503,
                        f"The gateway is serving {self.admitted} requests, its limit "
                        "(COE_MAX_IN_FLIGHT); retry shortly",
                        "server_overloaded",
                        "server_overloaded",
                    ),
                    retry_after=True,
                )
                return
            self.admitted += admit
            measuring = None
            if admit:
                upstream, measuring = measure_upstream()
            try:
                limited = self._limited(receive, None if self.is_upload(path) else limit)
                await self.app(scope, limited, send_wrapped)
            finally:
                self.admitted -= admit
                if measuring is not None:
                    stop_measuring(measuring)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
            if upstream is not None:  # what the gateway itself added to the experts' time
                self.metrics.observe_overhead(path, elapsed - upstream.seconds)
            reset_request_id(token)

    def _limited(self, receive: Receive, max_bytes: int | None) -> Receive:
        """Bound the time a client may take to send its body (slow-client protection) and,
        unless an upload (which bounds what it reads), the bytes of a body sent without a
        content-length."""
        deadline = time.monotonic() + self.body_timeout_s
        body_done = False
        received = 0

        async def wrapped() -> Message:
            nonlocal body_done, received
            if body_done:
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except TimeoutError:
                raise RequestTimeout(
                    f"Request body not received within {self.body_timeout_s:.0f} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if max_bytes is not None and received > max_bytes:
                    raise PayloadTooLarge(f"Request body exceeds the {max_bytes}-byte limit")
                body_done = not message.get("more_body", False)
            return message

        return wrapped

    @staticmethod
    async def _reject(send: Send, status: int, body: bytes, retry_after: bool = False) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if retry_after:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
