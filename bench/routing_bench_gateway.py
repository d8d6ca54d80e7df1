"""The gateway half of bench/routing_bench.py: a real `coe serve` per routing encoder.

Each run serves a copy of the shipped experts.yaml (its `encoder:` set, every expert pointed
at one fast test upstream in its own process, the embedded store, no query cache) and
measures what an operator would: memory, whether torch was loaded, /v1/route latency and
chat throughput routed (`coe/auto`) against naming an expert.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
NAMED_EXPERT = "generalist"
ROUTED = "coe/auto"
UPSTREAM_LIMIT = 256  # every expert's max_concurrency: measure routing, not the expert's cap


@dataclass(frozen=True)
class GatewayPlan:
    route_requests: int = 60  # per query length
    chat_requests: int = 300  # per model and concurrency level
    levels: tuple[int, ...] = (1, 16)
    start_timeout_s: float = 300  # two loaded cores importing torch take a while


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _orphan_proof(argv: list[str]) -> list[str]:
    """`argv` under setpriv(1) where there is one: killed when the bench dies, however."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def served_config(encoder: str, upstream: str, shipped: Path) -> dict[str, Any]:
    """The shipped experts.yaml with `encoder` set and every expert at `upstream`; paths made
    absolute so the copy can live anywhere, no local servers (the upstream stands in)."""
    raw: dict[str, Any] = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    raw["encoder"] = encoder
    raw.pop("local_servers", None)
    raw["routers_dirs"] = [
        str((shipped.parent / d).resolve()) for d in raw.get("routers_dirs", ["routers"])
    ]
    for expert in raw["experts"]:
        expert["endpoints"] = [upstream]
        expert.setdefault("limits", {})["max_concurrency"] = UPSTREAM_LIMIT
    for router in raw.get("routers", {}).values():
        params = router.get("params") or {}
        for key in ("instructions", "examples", "models_file"):
            if isinstance(params.get(key), str):
                params[key] = str((shipped.parent / params[key]).resolve())
    return raw


def _vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def _loaded(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


async def _wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> float:
    start = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - start < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"{url} exited with {proc.returncode} before it was healthy")
            try:
                async with http.get(f"{url}/health") as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy within {timeout_s:.0f} s")


def _p50_ms(seconds: Sequence[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


async def _post_all(
    http: aiohttp.ClientSession, url: str, bodies: Sequence[dict[str, Any]], concurrency: int
) -> dict[str, Any]:
    """POST every body, `concurrency` at a time; latency p50, requests/s and errors."""
    latencies: list[float] = []
    errors = 0
    todo = iter(bodies)

    async def worker() -> None:
        nonlocal errors
        for body in todo:  # one shared iterator: each body is sent once
            t0 = time.perf_counter()
            async with http.post(url, json=body) as r:
                await r.read()
                errors += r.status != 200
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "n": len(bodies),
        "errors": errors,
        "rps": round(len(bodies) / wall, 1),
        "p50_ms": _p50_ms(latencies),
    }


def _distinct(texts: Sequence[str], n: int, tag: str) -> list[str]:
    """`n` different query texts drawn from `texts` (the query cache can never help)."""
    return [f"{texts[i % len(texts)]} ({tag} {i})" for i in range(n)]


def _chat(text: str, model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16}


async def _measure(
    base: str, pid: int, short: Sequence[str], long: Sequence[str], plan: GatewayPlan
) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=max(plan.levels))
    async with aiohttp.ClientSession(connector=conn) as http:
        warm = [_chat(t, m) for t in _distinct(short, 20, "warm") for m in (ROUTED, NAMED_EXPERT)]
        await _post_all(http, f"{base}/v1/chat/completions", warm, 4)
        out: dict[str, Any] = {
            "rss_mib": _vm_rss_mib(pid),
            "torch_loaded": _loaded(pid, "libtorch"),
            "onnxruntime_loaded": _loaded(pid, "onnxruntime"),
        }
        for name, texts in (("short", short), ("long", long)):
            bodies = [
                {"model": ROUTED, "query": q} for q in _distinct(texts, plan.route_requests, "r")
            ]
            r = await _post_all(http, f"{base}/v1/route", bodies, 1)
            out[f"route_{name}_p50_ms"] = r["p50_ms"]
            out["errors"] = out.get("errors", 0) + r["errors"]
        for level in plan.levels:
            row: dict[str, Any] = {}
            for label, model in (("routed", ROUTED), ("named", NAMED_EXPERT)):
                texts = _distinct(short, plan.chat_requests, f"{label} c{level}")
                row[label] = await _post_all(
                    http, f"{base}/v1/chat/completions", [_chat(t, model) for t in texts], level
                )
                out["errors"] += row[label]["errors"]
            row["ratio_rps"] = round(row["routed"]["rps"] / row["named"]["rps"], 3)
            out[f"chat_c{level}"] = row
        out["rss_after_mib"] = _vm_rss_mib(pid)
        return out


class Upstream:
    """The fast OpenAI-compatible test upstream, in its own process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "coe.testing", "--port", str(self.port), "--name", "fast"]
        self.proc = subprocess.Popen(
            _orphan_proof(argv), cwd=REPO, env=env, stdin=subprocess.DEVNULL
        )

    async def ready(self) -> None:
        await _wait_healthy(self.url, 60, self.proc)

    def stop(self) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def clean_env() -> dict[str, str]:
    """This environment without any COE_ setting (no Redis: the embedded store), plus the
    gateway settings the bench fixes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COE_")}
    keep = {k: os.environ[k] for k in ("COE_CACHE_DIR",) if k in os.environ}
    return {
        **env,
        **keep,
        "HF_HUB_OFFLINE": "1",
        "COE_DEV_MODE": "1",
        "COE_LOG_LEVEL": "WARNING",
        "COE_ENCODER_CACHE_SIZE": "0",
    }


class Gateway:
    """`coe serve` on a copy of the shipped experts.yaml with `encoder:` set, in `folder`."""

    def __init__(self, encoder: str, upstream: str, folder: Path, shipped: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = folder / "experts.yaml"
        cfg.write_text(yaml.safe_dump(served_config(encoder, upstream, shipped)))
        self.log_path = folder / "gateway.log"
        argv = [sys.executable, "-m", "coe.cli", "serve", "-c", str(cfg), "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                _orphan_proof(argv),
                cwd=REPO,
                env=clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        _stop(self.proc)


async def bench_gateway(
    encoder: str,
    upstream: Upstream,
    short: Sequence[str],
    long: Sequence[str],
    plan: GatewayPlan,
    shipped: Path = REPO / "experts.yaml",
) -> dict[str, Any]:
    """Serve `encoder` in a fresh gateway process, measure it, stop it."""
    with tempfile.TemporaryDirectory(prefix="coe-routing-bench-") as tmp:
        gw = Gateway(encoder, upstream.url, Path(tmp), shipped)
        try:
            try:
                start_s = await _wait_healthy(gw.url, plan.start_timeout_s, gw.proc)
            except RuntimeError as err:
                raise RuntimeError(f"{err}\n{gw.log_tail()}") from None
            result = await _measure(gw.url, gw.proc.pid, short, long, plan)
            return {"start_s": round(start_s, 1), **result}
        finally:
            gw.stop()
