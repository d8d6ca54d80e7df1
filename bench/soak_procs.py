"""The soak benchmark's deployment: its own Redis, fake experts, two gateways and a batch
worker, all on loopback; each can be killed, hung and restarted, and every process is gone
when the deployment closes (also when the harness itself is killed: PDEATHSIG)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
REDIS_SERVER = "/usr/bin/redis-server"
UPSTREAM_DELAY_S = 0.03  # like a small, fast model: every answer waits this long

# The `coe/auto` pipeline: kNN over a few example requests per expert, then the default.
ROUTES = {
    "math-tutor": [
        "What is 17 times 23?",
        "Solve for x in 3x + 7 = 22.",
        "A train travels 120 km in 1.5 hours. What is its average speed?",
        "What is the derivative of x squared?",
        "What is the area of a circle with radius 4?",
    ],
    "coder": [
        "Write a Python function that reverses a string.",
        "How do I read a CSV file in Python?",
        "What does a list comprehension do in Python?",
        "Write a function that checks whether a number is prime.",
        "How do I sort a dictionary by value?",
    ],
    "generalist": [
        "What is the capital of France?",
        "Can you recommend a good book for the weekend?",
        "Tell me a fun fact about octopuses.",
        "What should I cook for dinner tonight?",
        "Give me tips for a job interview.",
    ],
}
EXPERTS = list(ROUTES)


def _orphan_proof(argv: list[str]) -> list[str]:
    """`argv` under setpriv(1) where there is one: SIGKILL when the harness dies, however."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def experts_yaml(ports: Mapping[str, int]) -> dict[str, Any]:
    return {
        "experts": [
            {
                "name": name,
                "model": name,
                "endpoints": [f"http://127.0.0.1:{port}"],
                "description": f"the {name} expert",
                "limits": {"max_concurrency": 256, "timeout_s": 10},
            }
            for name, port in ports.items()
        ],
        "default_expert": "generalist",
        "routers": {
            "topic": {
                "type": "embedding",
                "params": {"mode": "knn", "k": 3, "threshold": 0.2, "routes": ROUTES},
            },
            "fallback": {"type": "default"},
        },
        "pipelines": {"auto": {"routers": ["topic", "fallback"]}},
        "default_pipeline": "auto",
        "routers_dirs": [str(REPO / "routers")],
    }


@dataclass
class Intervals:
    """When a component was down: [down_at, up_at) pairs, up_at None while still down."""

    down: list[tuple[float, float | None]] = field(default_factory=list)

    def went_down(self, at: float) -> None:
        self.down.append((at, None))

    def came_up(self, at: float) -> None:
        if self.down and self.down[-1][1] is None:
            self.down[-1] = (self.down[-1][0], at)

    def up_throughout(self, start: float, end: float) -> bool:
        return all(end < d or (u is not None and start >= u) for d, u in self.down)


async def _poll(check: Callable[[], Any], what: str, timeout_s: float) -> float:
    """Await `check()` until it returns true; the monotonic time it first did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return time.monotonic()
        except (OSError, httpx.HTTPError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout_s:.0f} s")


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        return (await client.get(url)).status_code == 200


async def _redis_pong(port: int) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 2)).startswith(b"+PONG")
    finally:
        writer.close()


class Deployment:
    """Every process of the soak; `close()` stops them all, whatever state they are in."""

    def __init__(self, logs: Path, ports: dict[str, int], torch_threads: int = 1):
        self.logs = logs
        self.ports = ports  # redis, up:<expert>, gw0, gw1
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.upstream_down = {name: Intervals() for name in EXPERTS}
        self.redis_down = Intervals()
        cfg = logs / "experts.yaml"
        cfg.write_text(yaml.safe_dump(experts_yaml({e: ports[f"up:{e}"] for e in EXPERTS})))
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "COE_EXPERTS_FILE": str(cfg),
            "COE_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "COE_STORE_PREFIX": "coe-soak:",
            "COE_DEV_MODE": "1",
            "COE_BATCH_WORKER": "false",
            "COE_LOG_LEVEL": "WARNING",
            "COE_BATCH_CHUNK": "16",
            "COE_BATCH_CLAIM_IDLE_S": "10",
        }
        if torch_threads:  # 0: torch's default, one compute thread per core in every process
            self.env["OMP_NUM_THREADS"] = str(torch_threads)

    @property
    def gateways(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ports[g]}" for g in ("gw0", "gw1")]

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                _orphan_proof(argv),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the harness, which stops all in order
            )

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=30)

    async def start_redis(self) -> float:
        port = self.ports["redis"]
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"]
        self._spawn("redis", [*argv, "--save", "", "--appendonly", "no"])
        return await _poll(lambda: _redis_pong(port), "redis-server", 30)

    async def start_upstream(self, expert: str) -> float:
        port = self.ports[f"up:{expert}"]
        argv = [sys.executable, "-m", "coe.testing", "--port", str(port), "--name", expert]
        self._spawn(f"up:{expert}", argv)
        up = await _poll(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), expert, 60)
        async with httpx.AsyncClient(timeout=5) as client:
            fault = {"mode": "ok", "delay_s": UPSTREAM_DELAY_S}
            (await client.post(f"http://127.0.0.1:{port}/_fault", json=fault)).raise_for_status()
        return up

    async def start_gateway(self, name: str) -> float:
        argv = [sys.executable, "-m", "coe.cli", "serve", "--port", str(self.ports[name])]
        self._spawn(name, argv)
        url = f"http://127.0.0.1:{self.ports[name]}/health"
        return await _poll(lambda: _http_ok(url), f"gateway {name}", 300)

    def start_worker(self) -> None:
        # no --name: a restarted worker is a new consumer (host-pid), as a restarted pod is
        self._spawn("worker", [sys.executable, "-m", "coe.cli", "worker"])

    async def start_all(self) -> None:
        await self.start_redis()
        await asyncio.gather(*(self.start_upstream(e) for e in EXPERTS))
        # one at a time: both import torch and load the encoder, which two cores feel
        for gw in ("gw0", "gw1"):
            await self.start_gateway(gw)
        self.start_worker()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a hung Redis must be able to act on TERM
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
