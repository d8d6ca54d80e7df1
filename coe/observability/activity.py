"""What the console shows of live traffic, across every replica: routing decisions counted per
minute, and the last chat requests with their decision. Both live in the store with TTLs.

Recording never fails or slows a request: `record` only puts the entry on a bounded queue
(a full queue drops it, counted and logged), and one background task writes the queue out.
A store that is down costs the console its data, never a request its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

from coe.errors import CoeError
from coe.store import keys
from coe.store.base import Store

if TYPE_CHECKING:
    from coe.pipeline import Plan

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOWS_MIN = (5, 60)  # the routing mix's windows, in minutes
MIX_TTL_S = 61 * 60 + 60  # a minute's counters outlive the longest window
RECENT_MAX = 200
RECENT_TTL_S = 24 * 3600
QUEUE_MAX = 2000
BATCH_MAX = 64  # entries written concurrently by the writer
READ_CHUNK = 32  # reads in flight at once (each may take a pooled connection)
WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class RequestRecord:
    """One chat request as the console lists it."""

    at: float  # Unix time the answer (or failure) came
    request_id: str
    model: str  # what the client asked for
    pipeline: str | None  # None: the client named an expert
    router: str
    reason: str
    category: str | None
    candidates: list[dict[str, Any]]  # [{"expert", "score"}], best first
    k: int
    aggregation: str | None  # the strategy when k > 1
    expert: str | None  # who answered (comma-joined after a fan-out); None on failure
    status: int
    latency_ms: float
    stream: bool
    error: str | None = None

    @property
    def combo(self) -> tuple[str, str, str]:
        """What the routing mix counts: pipeline, router and the chosen experts."""
        chosen = "+".join(c["expert"] for c in self.candidates[: self.k]) or "-"
        return (self.pipeline or "-", self.router, chosen)


def encode_combo(combo: tuple[str, str, str]) -> str:
    return "|".join(quote(part, safe="") for part in combo)


def decode_combo(text: str) -> tuple[str, str, str] | None:
    parts = text.split("|")
    if len(parts) != 3:
        return None
    return (unquote(parts[0]), unquote(parts[1]), unquote(parts[2]))


class Watch:
    """A routed chat request on its way: `answer` awaits the expert call and records how it
    went (then returns or raises exactly what the call did)."""

    def __init__(self, activity: Activity, plan: Plan, request_id: str, model: str, stream: bool):
        self.activity = activity
        self.plan = plan
        self.request_id = request_id
        self.model = model
        self.stream = stream
        self.started = time.perf_counter()

    async def answer(self, pending: Awaitable[T]) -> T:
        try:
            result = await pending
        except CoeError as err:
            self._done(None, err.status_code, err.message)
            raise
        except asyncio.CancelledError:
            self._done(None, 499, "the client went away")
            raise
        except Exception as err:
            self._done(None, 500, type(err).__name__)
            raise
        experts = getattr(result, "experts", None) or self.plan.decision.chosen
        self._done(",".join(experts), 200, None)
        return result

    def _done(self, expert: str | None, status: int, error: str | None) -> None:
        try:
            plan, decision = self.plan, self.plan.decision
            elapsed_ms = (time.perf_counter() - self.started) * 1000 + plan.route_ms
            record = RequestRecord(
                at=self.activity.clock(),
                request_id=self.request_id,
                model=self.model,
                pipeline=plan.target.pipeline,
                router=decision.router,
                reason=decision.reason,
                category=decision.category,
                candidates=[{"expert": c.expert, "score": c.score} for c in decision.candidates],
                k=decision.k,
                aggregation=plan.aggregation.strategy if decision.k > 1 else None,
                expert=expert,
                status=status,
                latency_ms=round(elapsed_ms, 1),
                stream=self.stream,
                error=error,
            )
        except Exception:  # the console's bookkeeping must never fail the request
            log.exception("could not record request %s for the console", self.request_id)
            return
        self.activity.record(record)


class Activity:
    """Writes and reads the console's view of traffic. One per process (see Runtime)."""

    def __init__(
        self,
        store: Store,
        *,
        recent_max: int = RECENT_MAX,
        queue_max: int = QUEUE_MAX,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.recent_max = recent_max
        self.clock = clock
        self.dropped = 0  # entries lost to a full queue
        self.failed = 0  # entries the store refused
        self._queue: asyncio.Queue[RequestRecord] = asyncio.Queue(maxsize=queue_max)
        self._warned = 0.0

    def watch(self, plan: Plan, request_id: str, model: str, stream: bool = False) -> Watch:
        return Watch(self, plan, request_id, model, stream)

    def record(self, record: RequestRecord) -> None:
        """Queue `record` for writing; never blocks, never raises."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            self._warn(f"activity queue full; {self.dropped} entries dropped so far")

    async def run(self, stop: asyncio.Event) -> None:
        """Write queued entries until `stop` is set (the runtime's background task)."""
        while not stop.is_set():
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=1.0)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write_logged(batch)
            for _ in batch:
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until every entry queued so far is written (tests, shutdown)."""
        await self._queue.join()

    async def _write_logged(self, records: list[RequestRecord]) -> None:
        try:
            await self.write(records)
        except Exception as err:  # the store is down or refused: the console misses them
            self.failed += len(records)
            self._warn(f"could not store request activity ({type(err).__name__}: {err})")

    async def write(self, records: list[RequestRecord]) -> None:
        """Count each decision in its minute and keep the requests among the last ones,
        numbered in the order given (one counter for every replica)."""
        top = await self.store.incr(keys.ACTIVITY_SEQ, len(records), RECENT_TTL_S)
        await self.store.expire(keys.ACTIVITY_SEQ, RECENT_TTL_S)  # lives while requests come
        first = top - len(records) + 1
        await asyncio.gather(*(self._write_one(r, first + i) for i, r in enumerate(records)))

    async def _write_one(self, record: RequestRecord, seq: int) -> None:
        minute = int(record.at // 60)
        await self.store.incr(keys.activity_mix(minute, encode_combo(record.combo)), 1, MIX_TTL_S)
        entry = json.dumps({"seq": seq, **asdict(record)})
        await self.store.set(keys.activity_request(seq), entry, RECENT_TTL_S)
        if seq > self.recent_max:
            await self.store.delete(keys.activity_request(seq - self.recent_max))

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning(message)

    # -- reading, for the console --------------------------------------------------------
    async def mix(self, windows: tuple[int, ...] = WINDOWS_MIN) -> dict[str, Any]:
        """Decisions per (pipeline, router, expert) over each window of minutes (this minute
        included), and the total of each of the last `max(windows)` minutes, oldest first."""
        now = int(self.clock() // 60)
        span = max(windows)
        wanted: list[tuple[str, tuple[str, str, str], int]] = []
        for key in await self.store.keys(keys.ACTIVITY_MIX):
            minute_text, _, combo_text = key.removeprefix(keys.ACTIVITY_MIX).partition(":")
            combo = decode_combo(combo_text)
            if combo is not None and minute_text.isdigit() and 0 <= now - int(minute_text) < span:
                wanted.append((key, combo, now - int(minute_text)))
        counts: dict[tuple[str, str, str], Counter[int]] = {}
        per_minute = [0] * span
        values = await self._get_many([key for key, _, _ in wanted])
        for (_, combo, age), value in zip(wanted, values, strict=True):
            if value is not None and value.lstrip("-").isdigit():
                counts.setdefault(combo, Counter())[age] += int(value)
                per_minute[span - 1 - age] += int(value)
        rows = []
        for (pipeline, router, expert), by_age in counts.items():
            row: dict[str, Any] = {"pipeline": pipeline, "router": router, "expert": expert}
            for window in windows:
                row[f"last_{window}m"] = sum(n for age, n in by_age.items() if age < window)
            rows.append(row)
        rows.sort(key=lambda r: (-r[f"last_{span}m"], r["pipeline"], r["router"], r["expert"]))
        totals = {f"last_{w}m": sum(r[f"last_{w}m"] for r in rows) for w in windows}
        return {"windows": list(windows), "rows": rows, "totals": totals, "per_minute": per_minute}

    async def recent(self, limit: int = RECENT_MAX) -> list[dict[str, Any]]:
        """The last `limit` requests recorded by any replica, newest first."""
        last = await self.store.get(keys.ACTIVITY_SEQ)
        if last is None:
            return []
        top = int(last)
        seqs = list(range(top, max(0, top - min(limit, self.recent_max)), -1))
        values = await self._get_many([keys.activity_request(s) for s in seqs])
        out = []
        for value in values:
            if value is not None:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(value))
        return out

    async def _get_many(self, names: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for start in range(0, len(names), READ_CHUNK):
            chunk = names[start : start + READ_CHUNK]
            out += await asyncio.gather(*(self.store.get(name) for name in chunk))
        return out
