"""Health waits, direct sleep/wake timings and the traffic driver of bench/gpu_pool_check.py
(`python -m bench.gpu_pool_drive health|direct|drive`, run by it as its own processes)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

import httpx
import yaml

BATCH = {"x-coe-priority": "batch"}
# "pool dev0: loaded alpha in 0.21 s" (coe/pool/pool.py)
SWAP_LINE = re.compile(r"pool (\S+): (loaded|unloaded) (\S+) in ([0-9.]+) s")


def fmt(xs: list[float]) -> str:
    if not xs:
        return "n=0"
    return f"n={len(xs)} p50 {statistics.median(xs):.3f} s, max {max(xs):.3f} s"


def gpu_mem_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(int(x) for x in out.split())


def load_config(path: str) -> dict[str, Any]:
    with open(path) as f:
        cfg = yaml.safe_load(f)
    name, pool = next(iter(cfg["pools"].items()))
    params = pool.get("params") or {}
    return {
        "pool": name,
        "url": pool["service"].rstrip("/"),
        "capacity": int(pool["capacity"]),
        "sleep": pool["controller"] == "sleep",
        "experts": [e["name"] for e in cfg["experts"]],
        "model": {e["name"]: e["model"] for e in cfg["experts"]},
        "servers": dict(params.get("servers") or params.get("upstreams") or {}),
    }


def cmd_health(args: argparse.Namespace) -> int:
    """0 once URL/health answers 200; 3 if the process exits first; 4 on time-out."""
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            os.kill(args.pid, 0)
        except ProcessLookupError:
            return 3
        try:
            with urllib.request.urlopen(args.url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return 0
        except OSError:
            pass
        time.sleep(0.5)
    return 4


def cmd_direct(args: argparse.Namespace) -> int:
    """Outside the pool: put every server but the first to sleep, time sleep/wake cycles."""
    cfg = load_config(args.config)
    urls = [cfg["servers"][e] for e in cfg["experts"]]
    sleeps: list[float] = []
    wakes: list[float] = []
    mem_awake = gpu_mem_mib()
    with httpx.Client(timeout=120) as http:

        def timed(url: str, path: str, into: list[float], **params: str) -> None:
            started = time.monotonic()
            http.post(url + path, params=params).raise_for_status()
            into.append(time.monotonic() - started)

        for url in urls[1:]:
            timed(url, "/sleep", sleeps, level="1")
        for _ in range(args.cycles):
            timed(urls[1], "/wake_up", wakes)
            timed(urls[1], "/sleep", sleeps, level="1")
        asleep = [http.get(u + "/is_sleeping").json().get("is_sleeping") for u in urls]
    mem_one = gpu_mem_mib()
    print(f"direct sleep (level 1): {fmt(sleeps)}")
    print(f"direct wake:            {fmt(wakes)}")
    print(f"servers asleep now: {asleep} (all but the first expected)")
    if mem_awake is not None and mem_one is not None:
        print(f"GPU memory used: {mem_awake} MiB all awake, {mem_one} MiB with one awake")
    return 0 if asleep == [False] + [True] * (len(urls) - 1) else 1


class Monitor:
    """Polls the servers' /is_sleeping (sleep pools) and the pool's /pool/state meanwhile."""

    def __init__(self, http: httpx.AsyncClient, cfg: dict[str, Any]):
        self.http = http
        self.cfg = cfg
        self.max_awake = 0
        self.max_occupied = 0
        self.polls = 0
        self.failed_polls = 0

    async def _awake(self) -> None:
        if not self.cfg["sleep"]:
            return
        answers = await asyncio.gather(
            *(self.http.get(u + "/is_sleeping", timeout=5) for u in self.cfg["servers"].values()),
            return_exceptions=True,
        )
        awake = 0
        for r in answers:
            if isinstance(r, BaseException) or r.status_code != 200:
                self.failed_polls += 1
                continue
            awake += r.json().get("is_sleeping") is False
        self.max_awake = max(self.max_awake, awake)

    async def _state(self) -> None:
        try:
            resp = await self.http.get(self.cfg["url"] + "/pool/state", timeout=5)
            pool = resp.json()["pools"][self.cfg["pool"]]
        except (httpx.HTTPError, ValueError, KeyError):
            self.failed_polls += 1
            return
        self.max_occupied = max(self.max_occupied, int(pool.get("occupied", 0)))

    async def run(self) -> None:
        while True:
            await asyncio.gather(self._awake(), self._state())
            self.polls += 1
            await asyncio.sleep(0.1)


async def metrics(http: httpx.AsyncClient, cfg: dict[str, Any]) -> dict[str, Any]:
    """The pool's figures on the service's /metrics, summed over its experts."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await http.get(cfg["url"] + "/metrics")).text
    out: dict[str, Any] = {"names": set(), "buckets": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("pool") != cfg["pool"]:
                continue
            out["names"].add(s.name)
            if s.name == "coe_pool_swap_seconds_bucket":
                le = float(s.labels["le"])
                out["buckets"][le] = out["buckets"].get(le, 0.0) + s.value
            elif not s.name.endswith("_bucket"):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def bucket_p50(buckets: dict[float, float]) -> str:
    total = buckets.get(float("inf"), 0.0)
    for le in sorted(buckets):
        if total and buckets[le] >= total / 2:
            return f"<= {le:g} s"
    return "n/a"


async def ask(
    http: httpx.AsyncClient, cfg: dict[str, Any], expert: str, text: str, headers: dict[str, str]
) -> str | None:
    """One chat call through the pool service; None if answered by the right model."""
    model = cfg["model"][expert]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 16,
        "temperature": 0,
    }
    try:
        resp = await http.post(cfg["url"] + "/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as err:
        return f"{expert}: {type(err).__name__}: {err}"
    if resp.status_code != 200:
        return f"{expert}: {resp.status_code} {resp.text[:200]}"
    answered = resp.json().get("model")
    return None if answered == model else f"{expert}: answered by {answered!r}"


async def first_token(
    http: httpx.AsyncClient, cfg: dict[str, Any], expert: str, text: str
) -> tuple[float | None, str | None]:
    """Seconds to the first streamed content token, or an error."""
    body = {
        "model": cfg["model"][expert],
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
    }
    started = time.monotonic()
    first: float | None = None
    async with http.stream("POST", cfg["url"] + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return None, f"{expert}: {resp.status_code} {resp.text[:200]}"
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return None, f"{expert}: stream error {chunk['error']}"
            choices = chunk.get("choices") or []
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.monotonic() - started
    return first, None if first is not None else f"{expert}: no content streamed"


async def resident(http: httpx.AsyncClient, cfg: dict[str, Any]) -> set[str]:
    pool = (await http.get(cfg["url"] + "/pool/state")).json()["pools"][cfg["pool"]]
    return {e for e, s in pool["experts"].items() if s.get("state") == "resident"}


def grouped(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Grouped by expert in order of first appearance, as a batch worker sends its work."""
    order: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        order.setdefault(item[1], []).append(item)
    return [item for group in order.values() for item in group]


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config)
    experts = cfg["experts"]
    rng = random.Random(args.seed)
    errors: list[str] = []
    rows: list[tuple[str, int, float, int]] = []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10), limits=limits) as http:
        monitor = Monitor(http, cfg)
        watch = asyncio.create_task(monitor.run())

        async def phase(label: str, work: Any) -> None:
            before = await metrics(http, cfg)
            started = time.monotonic()
            failed = [e for e in await work if e]
            wall = time.monotonic() - started
            after = await metrics(http, cfg)
            loads = after.get("coe_pool_loads_total", 0.0) - before.get("coe_pool_loads_total", 0.0)
            errors.extend(failed)
            rows.append((label, int(loads), wall, len(failed)))
            print(f"{label:<44} loads {int(loads):>3}  wall {wall:6.1f} s  errors {len(failed)}")

        # 1. Interactive calls one at a time, in a seeded random expert order.
        seq = [(f"Say the number {i} in words.", rng.choice(experts)) for i in range(args.queries)]
        current = await resident(http, cfg)
        prev = next(iter(current)) if len(current) == 1 else None
        changes = 0
        for _, e in seq:
            changes += e != prev
            prev = e

        async def one_by_one() -> list[str | None]:
            return [await ask(http, cfg, e, q, {}) for q, e in seq]

        await phase(f"per-query order, 1 sender ({changes} changes)", one_by_one())

        # 2. The same work as batch calls from three senders, each grouped by expert.
        async def sender(items: list[tuple[str, str]]) -> list[str | None]:
            return [await ask(http, cfg, e, q, BATCH) for q, e in grouped(items)]

        async def three_senders() -> list[str | None]:
            parts = await asyncio.gather(*(sender(seq[k::3]) for k in range(3)))
            return [e for part in parts for e in part]

        await phase("grouped by expert, 3 batch senders", three_senders())

        # 3. A concurrent interactive burst over every expert.
        burst = [(f"Name a colour ({i}).", rng.choice(experts)) for i in range(args.queries)]

        async def at_once() -> list[str | None]:
            return list(await asyncio.gather(*(ask(http, cfg, e, q, {}) for q, e in burst)))

        await phase(f"burst of {len(burst)} concurrent calls", at_once())

        # 4. Streamed: the first token right after a wake (another expert was resident), then warm.
        cold: list[float] = []
        warm: list[float] = []
        for i in range(2 * len(experts)):
            asleep = [e for e in experts if e not in await resident(http, cfg)]
            target = asleep[i % len(asleep)] if asleep else experts[i % len(experts)]
            for into in (cold, warm):
                seconds, err = await first_token(http, cfg, target, f"Count to {i + 3}.")
                if err:
                    errors.append(err)
                elif seconds is not None:
                    into.append(seconds)
        label = "after a wake" if cfg["sleep"] else "switching expert"
        print(f"first token {label}: {fmt(cold)}")
        print(f"first token warm:{' ' * (len(label) - 4)} {fmt(warm)}")

        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        final = await metrics(http, cfg)
    return {
        "cfg": cfg,
        "rows": rows,
        "changes": changes,
        "errors": errors,
        "cold": cold,
        "warm": warm,
        "final": final,
        "monitor": monitor,
    }


def report(args: argparse.Namespace, run: dict[str, Any]) -> int:
    """Swap seconds from the pool log and /metrics, then the checks and the verdict."""
    cfg, rows, errors, final, monitor = (
        run["cfg"],
        run["rows"],
        run["errors"],
        run["final"],
        run["monitor"],
    )
    experts, cold, warm = cfg["experts"], run["cold"], run["warm"]
    wakes: list[float] = []
    sleeps: list[float] = []
    with open(args.pool_log, errors="replace") as f:
        for line in f:
            m = SWAP_LINE.search(line)
            if m and m.group(1) == cfg["pool"]:
                (wakes if m.group(2) == "loaded" else sleeps).append(float(m.group(4)))
    word = ("wake", "sleep") if cfg["sleep"] else ("load", "unload")
    print(f"{word[0]} seconds (pool log):  {fmt(wakes)}")
    print(f"{word[1]} seconds (pool log): {fmt(sleeps)}")
    names = sorted(n for n in final["names"] if not n.endswith(("_bucket", "_created")))
    loads = final.get("coe_pool_loads_total", 0.0)
    failures = final.get("coe_pool_failures_total", 0.0)
    swap_sum = final.get("coe_pool_swap_seconds_sum", 0.0)
    swap_count = final.get("coe_pool_swap_seconds_count", 0.0)
    print(
        f"/metrics: loads {loads:g}, unloads {final.get('coe_pool_unloads_total', 0.0):g}, "
        f"failures {failures:g}, swap seconds {swap_sum:.3f} over {swap_count:g} swaps "
        f"(p50 {bucket_p50(final['buckets'])}, wake and sleep together)"
    )
    print(f"/metrics series for pool {cfg['pool']}: {', '.join(names) or 'none'}")
    awake = f"at most {monitor.max_awake} awake at once; " if cfg["sleep"] else ""
    print(
        f"{awake}/pool/state occupied at most {monitor.max_occupied} "
        f"(capacity {cfg['capacity']}; {monitor.polls} polls, {monitor.failed_polls} failed)"
    )
    for err in errors[:10]:
        print(f"error: {err}")

    problems = []
    if errors:
        problems.append(f"{len(errors)} failed calls")
    if monitor.max_occupied > cfg["capacity"]:
        problems.append(f"/pool/state showed {monitor.max_occupied} occupied > capacity")
    if "coe_pool_loads_total" not in final["names"] and cfg["sleep"]:
        problems.append("no coe_pool_loads_total for the pool on /metrics")
    if cfg["sleep"]:
        if monitor.max_awake > cfg["capacity"]:
            problems.append(f"{monitor.max_awake} servers awake at once > capacity")
        if failures:
            problems.append(f"{failures:g} swap failures")
        if not wakes:
            problems.append("no 'loaded ... in ... s' line in the pool log")
        elif statistics.median(wakes) > 5:
            problems.append(f"wake p50 {statistics.median(wakes):.1f} s (sleep mode not working?)")
        per_query, grouped_row = rows[0], rows[1]
        if run["changes"] >= 3 and grouped_row[1] >= per_query[1]:
            problems.append(f"grouped loads {grouped_row[1]} not below per-query {per_query[1]}")
        if len(cold) < 2 * len(experts):
            problems.append("first token after a wake not measured for every step")
    elif loads:
        problems.append(f"a static pool loaded {loads:g} times")
    total = 3 * args.queries + 4 * len(experts)
    kind = "sleep" if cfg["sleep"] else "static"
    head = f"{kind} pool, capacity {cfg['capacity']}, {len(experts)} experts"
    if problems:
        print(f"VERDICT: FAIL ({head}): {'; '.join(problems)}")
        return 1
    detail = f"{total} calls answered by the right model"
    if cfg["sleep"]:
        detail += (
            f", wake p50 {statistics.median(wakes):.2f} s, first token"
            f" {statistics.median(cold):.2f} s after a wake vs {statistics.median(warm):.2f} s"
            f" warm, at most {monitor.max_awake} awake, grouped loads {rows[1][1]}"
            f" vs per-query {rows[0][1]}"
        )
    else:
        detail += f", no swaps, occupied at most {monitor.max_occupied}"
    print(f"VERDICT: PASS ({head}): {detail}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("health")
    h.add_argument("url")
    h.add_argument("pid", type=int)
    h.add_argument("timeout", type=float)
    d = sub.add_parser("direct")
    d.add_argument("config")
    d.add_argument("--cycles", type=int, default=3)
    r = sub.add_parser("drive")
    r.add_argument("config")
    r.add_argument("pool_log")
    r.add_argument("--queries", type=int, default=12)
    r.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cmd == "health":
        return cmd_health(args)
    if args.cmd == "direct":
        return cmd_direct(args)
    return report(args, asyncio.run(drive(args)))


if __name__ == "__main__":
    sys.exit(main())
