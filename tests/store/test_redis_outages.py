"""Chat through Redis losing its data, hanging and restarting: two `coe serve` processes on
a Redis of our own, API keys required (every chat request touches Redis), a steady stream of
chat requests while Redis is flushed, stopped (SIGSTOP: a hang) and replaced by an empty one.
Every request must succeed, the registry must come back, and a hang must cost a request
little once the store's circuit is open."""

from __future__ import annotations

import signal
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from coe.testing import FakeUpstream
from tests.support.net import eventually, free_port, wait_healthy
from tests.support.processes import CoeProcesses, coe_processes
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
TOKEN = "outage-admin-token-0123456789"
SOCKET_TIMEOUT_S = 1.0  # the store's default (COE_STORE_SOCKET_TIMEOUT_S)
RESTORED = "expert registry was missing from the store"


@dataclass(frozen=True)
class Sent:
    at: float  # monotonic, when sent
    took: float
    gateway: int
    model: str
    status: int
    body: str


class ChatLoad:
    """Threads sending chat requests to every gateway in turn until stopped."""

    MODELS = ("alpha", "beta", "coe/auto")

    def __init__(self, urls: list[str], key: str, threads: int = 4):
        self.urls = urls
        self.key = key
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> ChatLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, n: int) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30, headers=headers) as http:
            i = n
            while not self._stop.is_set():
                gateway, model = i % len(self.urls), self.MODELS[i % len(self.MODELS)]
                body = {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}
                started = time.monotonic()
                try:
                    r = http.post(f"{self.urls[gateway]}/v1/chat/completions", json=body)
                    status, text = r.status_code, r.text[:300]
                except httpx.HTTPError as err:
                    status, text = 0, repr(err)
                took = time.monotonic() - started
                self.sent.append(Sent(started, took, gateway, model, status, text))
                i += 1
                time.sleep(0.02)


def start_gateways(procs: CoeProcesses, cfg: Path) -> list[str]:
    urls = []
    for name in ("g1", "g2"):
        port = free_port()
        procs.start(name, "serve", "-c", str(cfg), "--port", str(port))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_healthy(url, timeout_s=120)
    return urls


def test_chat_answers_through_redis_wipes_hangs_and_restarts(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    prefix = f"coe-outage:{uuid.uuid4().hex[:8]}:"
    experts_key, channel = f"{prefix}experts", f"{prefix}experts:changed"
    env = {
        "COE_ADMIN_TOKEN": TOKEN,
        "COE_REDIS_URL": redis_server.url,
        "COE_STORE_PREFIX": prefix,
        "COE_REQUIRE_API_KEY": "1",
        "COE_REGISTRY_POLL_S": "0.5",
        "COE_LOG_LEVEL": "WARNING",
    }
    with FakeUpstream("up") as up, coe_processes(tmp_path, env) as procs:
        cfg = tmp_path / "experts.yaml"
        config = {
            "experts": [
                {"name": "alpha", "model": "m", "endpoints": [up.base_url]},
                {"name": "beta", "model": "m", "endpoints": [up.base_url]},
            ],
            "default_expert": "alpha",
            "pipelines": {"auto": {"routers": ["default"]}},
            "routers_dirs": [str(REPO / "routers")],
        }
        cfg.write_text(yaml.safe_dump(config))
        urls = start_gateways(procs, cfg)
        made = httpx.post(
            f"{urls[0]}/admin/keys",
            json={"name": "load", "rate_limit_rpm": 1_000_000},
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        restored = lambda: sorted(redis_server.client().hgetall(experts_key)) == ["alpha", "beta"]  # noqa: E731

        with ChatLoad(urls, made.json()["key"]) as load:
            time.sleep(2)
            # (a) Redis loses its data.
            redis_server.client().flushall()
            eventually(restored, 15, "the registry restored after FLUSHALL")
            time.sleep(2)
            # (b) Redis hangs: connections stay open, nothing answers.
            redis_server.signal(signal.SIGSTOP)
            hung_at = time.monotonic()
            time.sleep(6)
            redis_server.signal(signal.SIGCONT)
            resumed_at = time.monotonic()
            time.sleep(3)
            # (c) Redis dies and an empty one takes its place.
            redis_server.kill()
            time.sleep(2)
            redis_server.start()
            eventually(restored, 20, "the registry restored in the fresh Redis")
            subscribers = lambda: redis_server.client().pubsub_numsub(channel)[0][1] == 2  # noqa: E731
            eventually(subscribers, 20, "both gateways subscribed again to registry notices")
            time.sleep(2)

        failed = [s for s in load.sent if s.status != 200]
        assert not failed, f"{len(failed)} of {len(load.sent)} failed, first: {failed[:3]}"
        assert len(load.sent) > 100
        assert {s.model for s in load.sent} == set(ChatLoad.MODELS)

        logs = [procs.log("g1"), procs.log("g2")]
        reseeds = sum(log.count(RESTORED) for log in logs)
        assert reseeds == 2, f"one reseed per wipe (FLUSHALL, restart), logged {reseeds}"
        for log in logs:
            # The hang and the restart: each opens the circuit once, whatever the traffic.
            assert 1 <= log.count("circuit open after") <= 2, log[-3000:]
            assert log.count("circuit closed") == log.count("circuit open after")
            # Followers wait between attempts: one warning per outage, no spinning.
            assert log.count("lost experts:changed notices") == 1, log[-3000:]

        # Once the circuit is open (three failures, each within the socket timeout), a
        # request no longer waits for Redis: only the one probe per cool-down does.
        during = [s.took for s in load.sent if hung_at + 3.5 <= s.at < resumed_at - 0.2]
        assert len(during) >= 10
        median = statistics.median(during)
        print(f"hang: {len(during)} requests, median {median * 1000:.1f} ms, "
              f"max {max(during) * 1000:.0f} ms")  # fmt: skip
        assert median < SOCKET_TIMEOUT_S / 10, sorted(during)
