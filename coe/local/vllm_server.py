"""Start and stop a vLLM OpenAI-compatible server process on this machine's CPU.

Flags follow what was measured to work on the CPU build: eager mode (fast
start), float32, a bounded KV cache, one OpenMP core per server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coe.errors import UpstreamError
from coe.local.model import cache_dir

log = logging.getLogger(__name__)


@dataclass
class VllmServer:
    model_path: Path
    port: int
    served_name: str
    host: str = "127.0.0.1"
    cpu_core: int | None = None
    max_model_len: int = 2048
    kv_cache_bytes: int = 256 * 1024 * 1024
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_path),
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--enforce-eager",
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--kv-cache-memory-bytes",
            str(self.kv_cache_bytes),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "VLLM_CACHE_ROOT": str(cache_dir() / "vllm"),
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                "VLLM_CPU_OMP_THREADS_BIND": str(self.cpu_core if self.cpu_core is not None else 0),
                "VLLM_LOGGING_LEVEL": env.get("VLLM_LOGGING_LEVEL", "WARNING"),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        log.info("starting vLLM %s on port %d", self.served_name, self.port)
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_healthy(self, timeout_s: float = 300.0) -> float:
        """Poll /health until 200; returns the seconds waited."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() - started < timeout_s:
                if self.process is not None and self.process.poll() is not None:
                    raise UpstreamError(
                        f"vLLM server {self.served_name} exited with code "
                        f"{self.process.returncode} during start-up"
                        + (f"; see {self.log_path}" if self.log_path else "")
                    )
                try:
                    if (await client.get(f"{self.base_url}/health")).status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        raise UpstreamError(f"vLLM server {self.served_name} not healthy after {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 20.0) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self.process = None
