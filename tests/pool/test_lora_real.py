"""One pool service in front of a real vLLM CPU server with LoRA adapters (capacity 2, three
adapters), shared by two `coe serve` gateways and a `coe worker` as separate processes.

vLLM's own /v1/models is polled all the while: never more than two adapters loaded, however
many processes send; each request is answered by the adapter it asked for; and the pool
swaps far less often than the experts change in the order requests are sent."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coe.errors import ConfigError
from coe.pool.controllers.sleep import SleepController
from tests.support.net import delete_prefix, free_port, wait_healthy
from tests.support.processes import coe_processes

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADAPTERS = ["ad-x", "ad-y", "ad-z"]
QUESTION = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Path]]]:
    from coe.local.model import ensure_smollm2
    from coe.local.vllm_server import VllmServer
    from tools.lora_adapters import make_random_adapters

    base = ensure_smollm2()
    server = VllmServer(
        base,
        free_port(),
        "base",
        cpu_core=1,
        extra_args=["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"],
        extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_SERVER_DEV_MODE": "1"},
        log_path=Path(os.environ.get("COE_TEST_LOG_DIR", "/tmp")) / "coe-test-lora.log",
    )
    server.start()  # adapters are made while the server boots
    try:
        adapters = make_random_adapters(base, tmp_path_factory.mktemp("lora"), ADAPTERS)
        asyncio.run(server.wait_healthy())
        yield server.base_url, adapters
    finally:
        server.stop()


class AdapterWatch:
    """Polls the server's own /v1/models: the most adapters it ever held at once."""

    def __init__(self, url: str):
        self.url = url
        self.peak = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                data = http.get(f"{self.url}/v1/models").json()["data"]
                self.peak = max(self.peak, len({m["id"] for m in data} & set(ADAPTERS)))
                self.polls += 1
                time.sleep(0.05)

    def __enter__(self) -> AdapterWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def pool_loads(service: str) -> float:
    text = httpx.get(f"{service}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("coe_pool_loads_total{")
    )


def requests_by_priority(service: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in httpx.get(f"{service}/metrics", timeout=5).text.splitlines():
        if line.startswith("coe_pool_requests_total{"):
            priority = line.split('priority="', 1)[1].split('"', 1)[0]
            counts[priority] = counts.get(priority, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_two_gateways_and_a_worker_share_one_pool_service(
    lora_server: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    url, adapters = lora_server
    service = f"http://127.0.0.1:{free_port()}"
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {
                        "name": f"e-{n}",
                        "model": n,
                        "endpoints": [service],
                        "pool": "lora",
                        "limits": {"timeout_s": 300},
                        "defaults": {"temperature": 0, "max_tokens": 8},
                    }
                    for n in ADAPTERS
                ],
                "default_expert": "e-ad-x",
                "pipelines": {"auto": {"routers": ["default"]}},
                "routers_dirs": [str(REPO / "routers")],
                "pools": {
                    "lora": {
                        "service": service,
                        "controller": "lora",
                        "capacity": 2,
                        "max_wait_s": 20,
                        "params": {
                            "base_url": url,
                            "max_loras": 2,
                            "adapters": {f"e-{n}": str(p) for n, p in adapters.items()},
                        },
                    }
                },
            }
        )
    )
    prefix = f"coe-test-pool:{uuid.uuid4().hex[:10]}:"
    env = {
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_EXPERTS_FILE": str(cfg),
        "COE_BATCH_WORKER": "false",
        "COE_BATCH_CHUNK": "4",
    }
    try:
        with coe_processes(tmp_path, env) as procs, AdapterWatch(url) as watch:
            procs.start("pool", "pool", "serve", "-c", str(cfg))
            wait_healthy(service, timeout_s=120)
            gateways = []
            for name in ("g1", "g2"):
                port = free_port()
                procs.start(name, "serve", "--port", str(port), "--dev")
                gateways.append(f"http://127.0.0.1:{port}")
            for g in gateways:
                wait_healthy(g, timeout_s=120)
            procs.start("worker", "worker", "--name", "w1")

            # Online: both gateways, the three experts interleaved, all at once.
            online = [(gateways[i % 2], f"e-{ADAPTERS[i % 3]}") for i in range(18)]
            # Offline: a batch job through the first gateway, run by the worker.
            lines = [
                {
                    "custom_id": f"b{i}",
                    "body": {"model": f"e-{ADAPTERS[(i * 2) % 3]}", "messages": QUESTION},
                }
                for i in range(12)
            ]
            upload = "\n".join(json.dumps(line) for line in lines).encode()
            job = httpx.post(
                f"{gateways[0]}/v1/batches",
                files={"file": ("in.jsonl", upload)},
                timeout=30,
            ).json()

            def chat(gateway: str, model: str) -> dict[str, Any]:
                body = {"model": model, "messages": QUESTION}
                r = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=300)
                assert r.status_code == 200, r.text
                return dict(r.json())

            with ThreadPoolExecutor(max_workers=18) as pool:
                answers = list(pool.map(lambda gm: chat(*gm), online))

            deadline = time.monotonic() + 300
            while True:
                status = httpx.get(f"{gateways[1]}/v1/batches/{job['id']}", timeout=10).json()
                if status["status"] == "completed":
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.5)
            results = httpx.get(f"{gateways[1]}/v1/batches/{job['id']}/results", timeout=10)
            batch = [json.loads(line) for line in results.text.splitlines()]
            loads = pool_loads(service)
            by_priority = requests_by_priority(service)

        assert watch.polls > 10 and watch.peak <= 2, (watch.peak, watch.polls)
        texts: dict[str, set[str]] = {}
        for (_, model), answer in zip(online, answers, strict=True):
            assert answer["model"] == model
            adapter = answer["coe"]["upstream_model"]
            assert adapter == model.removeprefix("e-")  # served by the adapter it asked for
            texts.setdefault(adapter, set()).add(answer["choices"][0]["message"]["content"])
        assert status["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
        for line, result in zip(lines, batch, strict=True):
            body = result["response"]["body"]
            assert body["model"] == line["body"]["model"]
            assert body["coe"]["upstream_model"] == line["body"]["model"].removeprefix("e-")
            assert body["coe"]["worker"] == "w1"
            adapter = body["coe"]["upstream_model"]
            texts.setdefault(adapter, set()).add(body["choices"][0]["message"]["content"])
        assert all(len(t) == 1 for t in texts.values()), texts  # greedy: one answer each
        assert len({t for ts in texts.values() for t in ts}) >= 2  # the adapters differ
        changes = sum(1 for a, b in itertools.pairwise(online) if a[1] != b[1])
        changes += sum(1 for a, b in itertools.pairwise(lines) if a["body"] != b["body"])
        print(f"pool: {loads:.0f} loads for {changes} expert changes; peak {watch.peak} adapters")
        assert changes == 28 and loads <= 8, loads  # far fewer loads than expert changes
        # the worker's calls reach the pool marked as batch work, the gateways' as online
        assert by_priority == {"online": 18, "batch": 12}, by_priority
    finally:
        delete_prefix(REDIS_URL, prefix)


async def test_sleep_controller_refuses_the_cpu_backend(
    lora_server: tuple[str, dict[str, Path]],
) -> None:
    url, _ = lora_server
    async with httpx.AsyncClient(timeout=30) as http:
        with pytest.raises(ConfigError, match="cannot sleep: it runs on the CPU backend"):
            await SleepController(http, {"x": url}).start()
