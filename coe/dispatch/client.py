"""Every chat call to an expert goes through here: OpenAI-compatible, across its replicas.

Per-expert concurrency limits, timeouts, and retry on another replica on a
connection error, timeout, 429 or 5xx (not on 401/403: every replica holds the same key).
Fallback to other experts is one level up (`coe.dispatch.fallback`). Errors carry a
client-safe message and the details (redacted URLs, upstream bodies) for the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing, asynccontextmanager
from typing import Any, Protocol

import httpx

from coe.dispatch.expert_state import ExpertStates
from coe.dispatch.http_errors import status_error, transport_error
from coe.dispatch.replicas import Replica, ReplicaSet
from coe.dispatch.sse import DONE, iter_sse_data
from coe.dispatch.timing import ExpertCall, current_clock, has_token, paused, waiting
from coe.errors import UpstreamError, UpstreamTimeout
from coe.experts.schema import ExpertSpec
from coe.security.redact import redact_text, redact_url

log = logging.getLogger(__name__)


def prepare_body(expert: ExpertSpec, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The request as this expert should see it: its model id, its system prompt, its caps."""
    out = {**expert.defaults, **body}
    out["model"] = expert.model
    out["stream"] = stream
    if stream:
        opts = dict(out.get("stream_options") or {})
        opts["include_usage"] = True
        out["stream_options"] = opts
    else:
        out.pop("stream_options", None)
    if expert.system_prompt:
        out["messages"] = [{"role": "system", "content": expert.system_prompt}, *body["messages"]]
    cap = expert.limits.max_tokens
    if cap is not None:
        for key in ("max_tokens", "max_completion_tokens"):
            if out.get(key) is not None:
                out[key] = min(int(out[key]), cap)
        if out.get("max_tokens") is None and out.get("max_completion_tokens") is None:
            out["max_tokens"] = cap
    return out


PRIORITY_HEADER = "x-coe-priority"  # "batch": a pool service keeps batch work grouped
SENDER_HEADER = "x-coe-sender"  # the batch worker sending it


class Liveness(Protocol):
    """Experts not worth calling now (`coe.dispatch.liveness.PoolStates`: their pool
    service reports them unavailable, or cannot be reached)."""

    def unavailable(self) -> set[str]: ...


class CallObserver(Protocol):
    """Told of every replica attempt (`coe.observability.Metrics` is one)."""

    def observe_expert_call(self, call: ExpertCall) -> None: ...


class ExpertClient:
    """Calls experts over one shared httpx client; one instance per process."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        liveness: Liveness | None = None,
        observer: CallObserver | None = None,
    ):
        self.http = http
        self.liveness = liveness
        self.observer = observer
        self.states = ExpertStates()

    @classmethod
    @asynccontextmanager
    async def session(cls) -> AsyncIterator[ExpertClient]:
        """A client with a connection pool of its own, for one-off tools (the CLI); the
        timeouts are each expert's own, as for any call."""
        async with httpx.AsyncClient() as http:
            yield cls(http)

    def replicas(self, expert: ExpertSpec) -> ReplicaSet:
        return self.states.of(expert).replicas

    def retain(self, names: Iterable[str]) -> None:
        """Forget the state of experts no longer registered (call on registry changes)."""
        self.states.retain(names)

    @asynccontextmanager
    async def _slot(self, expert: ExpertSpec) -> AsyncIterator[None]:
        state = self.states.of(expert)
        state.busy += 1
        try:
            try:
                await asyncio.wait_for(state.semaphore.acquire(), timeout=expert.limits.timeout_s)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"expert {expert.name} is at its concurrency limit "
                    f"({expert.limits.max_concurrency}) for {expert.limits.timeout_s:.0f} s",
                    expert=expert.name,
                    code="expert_busy",
                ) from None
            try:
                yield
            finally:
                state.semaphore.release()
        finally:
            state.busy -= 1

    def _observe(self, call: ExpertCall) -> None:
        if self.observer is not None:
            self.observer.observe_expert_call(call)

    def unavailable(self) -> set[str]:
        return self.liveness.unavailable() if self.liveness else set()

    def _timeout(self, expert: ExpertSpec) -> httpx.Timeout:
        return httpx.Timeout(expert.limits.timeout_s, connect=expert.limits.connect_timeout_s)

    def headers(
        self, expert: ExpertSpec, priority: str | None = None, sender: str | None = None
    ) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {expert.api_key}"} if expert.api_key else {}
        if priority is not None:
            headers[PRIORITY_HEADER] = priority
        if sender is not None:
            headers[SENDER_HEADER] = sender
        return headers

    def _attempts(self, expert: ExpertSpec) -> list[Replica]:
        """Each replica once, best first; the next expert is the fallback after that."""
        return self.replicas(expert).order()

    async def complete(
        self,
        expert: ExpertSpec,
        body: dict[str, Any],
        priority: str | None = None,
        sender: str | None = None,
    ) -> dict[str, Any]:
        """A non-streaming chat completion; tries each replica once. `priority="batch"`
        marks offline work, which a pool service groups by expert (`sender`: whose)."""
        payload = prepare_body(expert, body, stream=False)
        headers = self.headers(expert, priority, sender)
        with waiting(current_clock()):  # the slot too: waiting for the expert's capacity
            async with self._slot(expert):
                return await self._complete_on_replicas(expert, payload, headers)

    async def _complete_on_replicas(
        self, expert: ExpertSpec, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        replicas = self.replicas(expert)
        last: UpstreamError | None = None
        for replica in self._attempts(expert):
            replica.inflight += 1
            started = time.perf_counter()
            try:
                result = await self._post_json(expert, replica.url, payload, headers)
            except UpstreamError as err:
                self._observe(ExpertCall(expert.name, time.perf_counter() - started, False))
                last = err
                if not err.replica_retryable:
                    raise
                replicas.failed(replica)
                # INFO: the caller (fallback) warns once per expert it gives up on
                log.info("expert %s replica failed: %s", expert.name, err.detail)
                continue
            finally:
                replica.inflight -= 1
            seconds = time.perf_counter() - started
            usage = result.get("usage")
            self._observe(
                ExpertCall(
                    expert.name,
                    seconds,
                    True,
                    generation_s=seconds,
                    usage=usage if isinstance(usage, dict) else None,
                )
            )
            replicas.succeeded(replica)
            return result
        assert last is not None
        raise last

    async def _post_json(
        self, expert: ExpertSpec, base: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        url = f"{base}/v1/chat/completions"
        what = f"expert {expert.name} at {redact_url(base)}"
        try:
            resp = await self.http.post(
                url, json=payload, headers=headers, timeout=self._timeout(expert)
            )
        except httpx.HTTPError as err:
            raise transport_error(err, what, expert=expert.name, url=base, public=True) from err
        if resp.status_code >= 400:
            raise status_error(
                resp.status_code, resp.text, what, expert=expert.name, url=base, public=True
            )
        try:
            data: dict[str, Any] = resp.json()
        except ValueError as err:
            raise _invalid(expert, base, "sent invalid JSON") from err
        if not data.get("choices"):
            raise _invalid(expert, base, "sent a completion without choices")
        return data

    async def open_stream(
        self, expert: ExpertSpec, body: dict[str, Any]
    ) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
        """Start a stream: returns its first chunk and an iterator over the rest.

        Failures before the first chunk try the next replica; after it, a broken
        stream raises UpstreamError from the iterator (the caller reports it).
        """
        payload = prepare_body(expert, body, stream=True)
        replicas = self.replicas(expert)
        last: UpstreamError | None = None
        for replica in self._attempts(expert):
            stream = self._stream_chunks(expert, replica, payload)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                last = _invalid(expert, replica.url, "closed the stream before any token")
            except UpstreamError as err:
                last = err
                if not err.replica_retryable:
                    raise
            else:
                replicas.succeeded(replica)
                return first, stream
            replicas.failed(replica)
            log.info("expert %s replica failed to stream: %s", expert.name, last.detail)
        assert last is not None
        raise last

    async def _stream_chunks(
        self, expert: ExpertSpec, replica: Replica, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """The upstream's chunks; the time spent waiting for them counts on the request's
        upstream clock (not the time the reader holds each chunk), and the call is reported
        to the observer at the stream's end, whole or broken."""
        clock = current_clock()
        with waiting(clock):  # the slot too: waiting for the expert's capacity
            async with self._slot(expert):
                replica.inflight += 1
                call = _StreamTimes()
                chunks = self._read_stream(expert, replica.url, payload, call)
                try:
                    async with aclosing(chunks):  # a reader that stops closes the upstream
                        async for chunk in chunks:
                            with paused(clock):
                                yield chunk
                finally:
                    replica.inflight -= 1
                    self._observe(call.report(expert.name))

    async def _read_stream(
        self, expert: ExpertSpec, base: str, payload: dict[str, Any], call: _StreamTimes
    ) -> AsyncGenerator[dict[str, Any], None]:
        url = f"{base}/v1/chat/completions"
        what = f"expert {expert.name} at {redact_url(base)}"
        try:
            async with self.http.stream(
                "POST",
                url,
                json=payload,
                headers=self.headers(expert),
                timeout=self._timeout(expert),
            ) as resp:
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode(errors="replace")
                    raise status_error(
                        resp.status_code, text, what, expert=expert.name, url=base, public=True
                    )
                done = False
                async for data in iter_sse_data(resp.aiter_lines()):
                    if data.strip() == DONE:
                        done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as err:
                        raise _invalid(expert, base, "sent an invalid stream event") from err
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise _invalid(
                            expert,
                            base,
                            "reported an error mid-stream",
                            said=json.dumps(chunk["error"])[:300],
                        )
                    call.saw(chunk)
                    yield chunk
                if not done:
                    raise _invalid(expert, base, "ended its stream before [DONE]")
                call.ok = True
        except httpx.HTTPError as err:
            raise transport_error(
                err, f"{what} (streaming)", expert=expert.name, url=base, public=True
            ) from err


class _StreamTimes:
    """A stream's timings as its chunks arrive: sent, first generated token, end."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.usage: dict[str, Any] | None = None
        self.ok = False

    def saw(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        if self.first_token is None and has_token(chunk):
            self.first_token = time.perf_counter()
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]

    def report(self, expert: str) -> ExpertCall:
        ended = time.perf_counter()
        first = self.first_token
        return ExpertCall(
            expert,
            ended - self.started,
            self.ok,
            streamed=True,
            ttft_s=None if first is None else first - self.started,
            generation_s=None if first is None else ended - first,
            usage=self.usage,
        )


def _invalid(expert: ExpertSpec, base: str, what: str, said: str = "") -> UpstreamError:
    """An answer we cannot use: the client learns what went wrong, the log also where."""
    detail = f"expert {expert.name} at {redact_url(base)} {what}"
    return UpstreamError(
        f"expert {expert.name} {what}",
        expert=expert.name,
        url=redact_url(base),
        detail=f"{detail}: {redact_text(said)}" if said else detail,
        code="upstream_invalid_response",
    )
