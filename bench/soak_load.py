"""The soak's open-loop load: chat requests on a fixed schedule over both gateways, named
experts mixed with routed `coe/auto`; each request has its own id and leaves a record
whether or not an answer ever comes."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp

from bench.soak_procs import EXPERTS

TOPICS = [
    "What is {a} times {b}?",
    "Solve for x in {a}x + {b} = 100.",
    "Write a Python function that returns the {a}th prime number.",
    "How do I read line {a} of a CSV file in Python?",
    "Tell me a fun fact about the number {a}.",
    "What should I cook for {a} guests tonight?",
    "A car drives {a} km in {b} minutes. What is its speed?",
    "Give me {a} tips for a job interview.",
]


@dataclass(slots=True)
class Record:
    """One chat request: what was asked, when, and what (if anything) came back."""

    idx: int
    model: str  # an expert's name or "coe/auto"
    gateway: int
    scheduled: float  # monotonic times
    sent: float = 0.0
    done: float = 0.0
    status: int = 0  # 0: no HTTP response (see error)
    error: str = ""
    expert: str = ""  # x-coe-expert of an answer
    echoed: bool = False  # the answer carried this request's own id back

    @property
    def rid(self) -> str:
        return f"soak-{self.idx:08d}"

    @property
    def routed(self) -> bool:
        return self.model == "coe/auto"

    @property
    def latency(self) -> float:
        return self.done - self.sent


class Load:
    """Sends `rate` requests/s for `seconds`, never waiting for an answer before the next."""

    def __init__(
        self,
        gateways: list[str],
        rate: float,
        seconds: float,
        routed_share: float,
        timeout_s: float = 60.0,
        seed: int = 7,
    ):
        self.gateways = gateways
        self.rate = rate
        self.seconds = seconds
        self.routed_share = routed_share
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.t0 = 0.0
        self.send_wall = 0.0
        # aiohttp, not httpx: httpx's pool scans every queued request on each assignment,
        # which at a few hundred req/s with thousands in flight eats the generator's CPU.
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=10.0)
        self.clients: list[aiohttp.ClientSession] = []

    async def _open(self) -> None:
        if not self.clients:
            self.clients = [
                aiohttp.ClientSession(
                    base_url=g,
                    connector=aiohttp.TCPConnector(limit=4000, limit_per_host=0),
                    timeout=self.timeout,
                )
                for g in self.gateways
            ]

    def _body(self, rec: Record) -> dict[str, object]:
        # distinct text every time: each routed request is embedded, none comes from a cache
        text = self.rng.choice(TOPICS).format(a=self.rng.randint(2, 999), b=rec.idx % 97 + 2)
        return {
            "model": rec.model,
            "messages": [{"role": "user", "content": f"{text} [{rec.rid}]"}],
            "max_tokens": 16,
        }

    async def _one(self, rec: Record, body: dict[str, object]) -> None:
        rec.sent = time.monotonic()
        try:
            async with self.clients[rec.gateway].post(
                "/v1/chat/completions", json=body, headers={"x-request-id": rec.rid}
            ) as r:
                text = await r.text()
        except (aiohttp.ClientError, TimeoutError) as err:
            rec.done, rec.error = time.monotonic(), type(err).__name__
            return
        rec.done, rec.status = time.monotonic(), r.status
        if r.status == 503 and "server_overloaded" in text:
            rec.error = "shed"  # refused at once by the gateway's admission limit
        if r.status == 200:
            rec.expert = r.headers.get("x-coe-expert", "")
            rec.echoed = rec.rid in text

    def _launch(self, idx: int, scheduled: float) -> None:
        routed = self.rng.random() < self.routed_share
        model = "coe/auto" if routed else EXPERTS[idx % len(EXPERTS)]
        rec = Record(idx=idx, model=model, gateway=idx % len(self.clients), scheduled=scheduled)
        self.records.append(rec)
        task = asyncio.create_task(self._one(rec, self._body(rec)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, t0: float) -> None:
        """Send on the schedule t0 + i/rate; late sends go at once and their lateness is kept."""
        await self._open()
        self.t0 = t0
        total = int(self.rate * self.seconds)
        i = 0
        while i < total:
            now = time.monotonic()
            due = t0 + i / self.rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < total and t0 + i / self.rate <= now:
                self._launch(i, t0 + i / self.rate)
                i += 1
            await asyncio.sleep(0)  # let the sends just made start before the next wake-up
        self.send_wall = time.monotonic() - t0

    async def drain(self, grace_s: float) -> None:
        """Wait up to `grace_s` for the answers still out; what is left then is lost."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace_s)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients:
            await client.close()
