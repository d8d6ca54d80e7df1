"""Loads, swaps and wall time through one pool service: 1 sender vs 3, per-query vs grouped.

A real `coe pool serve` subprocess fronts real vLLM CPU servers; senders are client
subprocesses that call it. One seeded mixed workload (3 experts) runs four ways per
controller, each from an empty pool (a fresh pool service, no adapter or server left over):
1 or 3 senders (the work dealt out in turn), each sending one call at a time in arrival order
("per-query") or grouped by expert as a batch worker does ("grouped", marked
`x-coe-priority: batch`, each sender naming itself in `x-coe-sender`). Loads and swap
seconds come from the service's /metrics; the most experts resident at once is read from
the device side (vLLM's /v1/models for LoRA adapters, each server's /health for processes).

    .venv/bin/python bench/pool_service_bench.py [--controllers lora,process] [--queries 36]

`lora`: one server with --enable-lora and three random rank-8 adapters (tools/lora_adapters.py).
`process`: one server per expert, started and stopped by the pool (~25 s a start on this CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.net import free_port, wait_healthy  # noqa: E402 - after the path set-up

EXPERTS = ["e0", "e1", "e2"]
POOL = "bench"
BATCH_HEADER = {"x-coe-priority": "batch"}
LOG_DIR = Path(tempfile.gettempdir())

Item = tuple[str, str]  # (query, expert)


def grouped(items: list[Item]) -> list[Item]:
    """Grouped by expert in order of first appearance, the way a batch worker sends its share."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item[1], []).append(item)
    return [item for group in groups.values() for item in group]


def changes(items: list[Item]) -> int:
    return sum(1 for a, b in itertools.pairwise(items) if a[1] != b[1]) + (1 if items else 0)


# --- one sender: a separate process --------------------------------------------------------


def send(job_path: str) -> None:
    """Sender subprocess: waits for the common start, sends its calls one at a time."""
    job = json.loads(Path(job_path).read_text())
    # A batch worker names itself, so the pool knows when it has moved on to another expert.
    headers = {**BATCH_HEADER, "x-coe-sender": job["sender"]} if job["batch"] else {}
    errors: list[str] = []
    time.sleep(max(0.0, job["start_at"] - time.time()))
    with httpx.Client(timeout=900) as http:
        for query, model in job["items"]:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": query}],
                "max_tokens": job["max_tokens"],
                "temperature": 0,
            }
            try:
                resp = http.post(f"{job['url']}/v1/chat/completions", json=body, headers=headers)
            except httpx.HTTPError as err:
                errors.append(f"{model}: {type(err).__name__}: {err}")
                continue
            if resp.status_code != 200:
                errors.append(f"{model}: {resp.status_code} {resp.text[:200]}")
            elif resp.json().get("model") != model:
                errors.append(f"{model}: answered by {resp.json().get('model')!r}")
    print(json.dumps({"errors": errors, "done_at": time.time()}))


# --- the pool service and what it reports --------------------------------------------------


def pool_figures(url: str) -> dict[str, float]:
    """Loads, unloads, failures and swap seconds of the bench pool on the service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "coe_pool_loads_total": "loads",
        "coe_pool_unloads_total": "unloads",
        "coe_pool_failures_total": "failures",
        "coe_pool_swap_seconds_sum": "swap_s",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key and sample.labels.get("pool") == POOL:
                out[key] += sample.value
    return out


@contextmanager
def pool_service(config: Path, port: int, log_path: Path) -> Iterator[str]:
    """A `coe pool serve` subprocess for one scenario; stopped (SIGTERM, its servers too) after."""
    env = {**os.environ, "COE_LOG_LEVEL": "INFO", "COE_DEV_MODE": "1"}
    cmd = [sys.executable, "-m", "coe.cli", "pool", "serve", "--config", str(config)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, timeout_s=120)
        except RuntimeError:
            raise SystemExit(f"the pool service did not start; see {log_path}") from None
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class ResidencyWatch:
    """Polls what the device itself says is resident, in a thread, and keeps the maximum."""

    def __init__(self, count: Callable[[httpx.Client], int]):
        self.count = count
        self.maximum = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                try:
                    self.maximum = max(self.maximum, self.count(http))
                except httpx.HTTPError:
                    pass  # a server starting or stopping: the next poll counts it
                self._stop.wait(0.2)

    def __enter__(self) -> ResidencyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the two controllers -------------------------------------------------------------------


class Setup:
    """One controller's devices: the pool's config, a reset to empty, a residency count."""

    name: str
    capacity: int

    def config(self, service_url: str) -> dict[str, Any]:
        raise NotImplementedError

    def model(self, expert: str) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        """Leave nothing resident before a fresh pool service starts."""

    def resident(self, http: httpx.Client) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what the setup itself started."""


def pool_spec(
    controller: str, service_url: str, capacity: int, args: argparse.Namespace
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "service": service_url,
        "controller": controller,
        "capacity": capacity,
        "max_wait_s": args.max_wait_s,
    }
    if args.batch_linger_s is not None:
        spec["batch_linger_s"] = args.batch_linger_s
    return spec


def base_config(service_url: str, model: Callable[[str], str]) -> dict[str, Any]:
    return {
        "experts": [
            {"name": e, "model": model(e), "endpoints": [service_url], "pool": POOL}
            for e in EXPERTS
        ],
        "default_expert": EXPERTS[0],
        "routers_dirs": [],
    }


class LoraSetup(Setup):
    name = "lora"

    def __init__(self, capacity: int, args: argparse.Namespace):
        from coe.local.model import ensure_smollm2
        from coe.local.vllm_server import VllmServer
        from tools.lora_adapters import make_random_adapters

        self.capacity = capacity
        self.args = args
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        base = ensure_smollm2()
        self.server = VllmServer(
            base,
            free_port(),
            "base",
            cpu_core=1,
            extra_args=["--enable-lora", "--max-lora-rank", "8", "--max-loras", str(capacity)],
            extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
            log_path=LOG_DIR / "coe-bench-service-lora.log",
        )
        self.server.start()
        try:
            folder = Path(tempfile.mkdtemp(prefix="coe-bench-adapters-"))
            self.adapters = make_random_adapters(base, folder, [self.model(e) for e in EXPERTS])
            asyncio.run(self.server.wait_healthy())
        except BaseException:
            self.server.stop()
            raise

    def model(self, expert: str) -> str:
        return f"ad-{expert}"

    def config(self, service_url: str) -> dict[str, Any]:
        cfg = base_config(service_url, self.model)
        spec = pool_spec("lora", service_url, self.capacity, self.args)
        spec["params"] = {
            "base_url": self.server.base_url,
            "max_loras": self.capacity,
            "adapters": {e: str(self.adapters[self.model(e)]) for e in EXPERTS},
        }
        cfg["pools"] = {POOL: spec}
        return cfg

    def _loaded(self, http: httpx.Client) -> list[str]:
        models = http.get(f"{self.server.base_url}/v1/models").json()["data"]
        names = {self.model(e) for e in EXPERTS}
        return [m["id"] for m in models if m["id"] in names]

    def resident(self, http: httpx.Client) -> int:
        return len(self._loaded(http))

    def reset(self) -> None:
        with httpx.Client(timeout=60) as http:
            for name in self._loaded(http):
                url = f"{self.server.base_url}/v1/unload_lora_adapter"
                http.post(url, json={"lora_name": name}).raise_for_status()

    def close(self) -> None:
        self.server.stop()


class ProcessSetup(Setup):
    name = "process"
    capacity = 1

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ports = {e: free_port() for e in EXPERTS}

    def model(self, expert: str) -> str:
        return f"smol-{expert}"

    def config(self, service_url: str) -> dict[str, Any]:
        cfg = base_config(service_url, self.model)
        servers = {
            e: {"served_model_name": self.model(e), "port": port, "cpu_core": i % 2}
            for i, (e, port) in enumerate(self.ports.items())
        }
        spec = pool_spec("process", service_url, 1, self.args)
        spec["params"] = {"servers": servers}
        cfg["pools"] = {POOL: spec}
        return cfg

    def _up(self, http: httpx.Client) -> list[int]:
        up = []
        for port in self.ports.values():
            try:
                if http.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    up.append(port)
            except httpx.HTTPError:
                pass
        return up

    def resident(self, http: httpx.Client) -> int:
        return len(self._up(http))

    def reset(self) -> None:
        with httpx.Client() as http:
            left = self._up(http)
        if left:
            raise SystemExit(f"vLLM servers still answer on ports {left} after the pool stopped")


# --- one scenario --------------------------------------------------------------------------


def run_scenario(
    setup: Setup, work: list[Item], senders: int, order: str, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    setup.reset()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="coe-bench-service-"))
    config = tmp / "experts.yaml"
    cfg = setup.config(url)
    from coe.experts.schema import parse_config

    parse_config(cfg)  # a schema mistake fails here, with its message, not in the service log
    config.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    shares = [work[k::senders] for k in range(senders)]
    if order == "grouped":
        shares = [grouped(share) for share in shares]
    log_path = LOG_DIR / f"coe-bench-service-{tag}.log"
    with pool_service(config, port, log_path) as url:
        before = pool_figures(url)
        start_at = time.time() + 3.0
        procs = []
        for k, share in enumerate(shares):
            job = tmp / f"sender-{k}.json"
            job.write_text(
                json.dumps(
                    {
                        "url": url,
                        "start_at": start_at,
                        "batch": order == "grouped",
                        "sender": f"sender-{k}",
                        "max_tokens": args.max_tokens,
                        "items": [(q, setup.model(e)) for q, e in share],
                    }
                )
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--send", str(job)],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        with ResidencyWatch(setup.resident) as watch:
            outs = [p.communicate()[0] for p in procs]
        results = []
        for p, out in zip(procs, outs, strict=True):
            if p.returncode != 0 or not out.strip():
                raise SystemExit(f"a sender failed (exit {p.returncode}); pool log: {log_path}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        after = pool_figures(url)
    errors = [e for r in results for e in r["errors"]]
    for err in errors[:5]:
        print(f"    error: {err}", flush=True)
    return {
        "loads": int(after["loads"] - before["loads"]),
        "swap_s": after["swap_s"] - before["swap_s"],
        "failures": int(after["failures"] - before["failures"]),
        "wall_s": max(r["done_at"] for r in results) - start_at,
        "max_resident": watch.maximum,
        "errors": len(errors),
        "changes": sum(changes(share) for share in shares),
    }


def bench(controller: str, args: argparse.Namespace) -> list[tuple[str, int, str, dict[str, Any]]]:
    queries = args.queries if controller == "lora" else args.process_queries
    rng = random.Random(args.seed)
    work = [(f"Say the number {i} in words.", rng.choice(EXPERTS)) for i in range(queries)]
    from coe.experts.schema import PoolSpec

    linger = args.batch_linger_s
    if linger is None:
        linger = PoolSpec.model_fields["batch_linger_s"].default
    print(
        f"{controller}: {queries} queries over {len(EXPERTS)} experts (seed {args.seed}), "
        f"{changes(work)} expert changes in arrival order; max_wait_s {args.max_wait_s:g}, "
        f"batch_linger_s {linger:g}, max_tokens {args.max_tokens}",
        flush=True,
    )
    setup: Setup = (
        LoraSetup(args.lora_capacity, args) if controller == "lora" else ProcessSetup(args)
    )
    rows = []
    try:
        for senders in (1, 3):
            for order in ("per-query", "grouped"):
                print(f"  {controller}: {senders} sender(s), {order} ...", flush=True)
                tag = f"{controller}-{senders}-{order}"
                result = run_scenario(setup, work, senders, order, args, tag)
                rows.append((controller, senders, order, result))
    finally:
        setup.close()
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--send":
        send(sys.argv[2])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--controllers", default="lora,process", help="lora, process or both")
    parser.add_argument("--queries", type=int, default=36, help="the lora workload")
    parser.add_argument(
        "--process-queries", type=int, default=12, help="the process workload (~25 s a swap)"
    )
    parser.add_argument("--lora-capacity", type=int, default=1, choices=[1, 2])
    parser.add_argument(
        "--max-wait-s",
        type=float,
        default=600,
        help="the pools' starvation bound (large: only the scheduling order acts)",
    )
    parser.add_argument(
        "--batch-linger-s",
        type=float,
        default=None,
        help="the pools' batch_linger_s (default: its)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    unknown = set(controllers) - {"lora", "process"}
    if unknown or not controllers:
        parser.error(f"--controllers: lora and/or process, not {args.controllers!r}")

    rows = [row for c in controllers for row in bench(c, args)]
    capacity = {"lora": args.lora_capacity, "process": 1}
    print(
        f"\n{'controller':<10} {'cap':>3} {'senders':>7} {'order':<10} {'queries':>7} "
        f"{'changes':>7} {'loads':>5} {'swap s':>7} {'wall s':>7} {'max res':>7} {'errors':>6}"
    )
    for controller, senders, order, r in rows:
        queries = args.queries if controller == "lora" else args.process_queries
        print(
            f"{controller:<10} {capacity[controller]:>3} {senders:>7} {order:<10} {queries:>7} "
            f"{r['changes']:>7} {r['loads']:>5} {r['swap_s']:>7.1f} {r['wall_s']:>7.1f} "
            f"{r['max_resident']:>7} {r['errors'] + r['failures']:>6}"
        )
    print("(changes: expert changes in the order the senders send; max res: most experts")
    print(" resident at once as the device reports it; errors: failed calls + swap failures)")
    for controller in controllers:
        parts = []
        for senders in (1, 3):
            # per-query ran first, then grouped
            pq, gr = (r for c, s, _, r in rows if c == controller and s == senders)
            parts.append(
                f"{senders} sender{'s' if senders > 1 else ''} grouped: loads {gr['loads']} vs "
                f"per-query {pq['loads']}, wall {gr['wall_s']:.1f} s vs {pq['wall_s']:.1f} s"
            )
        print(f"{controller}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
