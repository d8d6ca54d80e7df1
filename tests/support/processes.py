"""`coe` commands as real processes for tests: started with their own log, stopped for sure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class CoeProcesses:
    """Every process a test started, each logging to its own file under `logs`."""

    def __init__(self, logs: Path, env: Mapping[str, str] | None = None):
        self.logs = logs
        self.env = {**os.environ, "COE_LOG_LEVEL": "WARNING", **(env or {})}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "coe.cli", *args],
            cwd=REPO,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


@contextmanager
def coe_processes(logs: Path, env: Mapping[str, str] | None = None) -> Iterator[CoeProcesses]:
    procs = CoeProcesses(logs, env)
    try:
        yield procs
    finally:
        procs.stop_all()
