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
from typing import TYPE_CHECKING

import httpx

from coe.dispatch.http_errors import status_error, transport_error
from coe.errors import UpstreamError
from coe.local.model import cache_dir, resolve_model

if TYPE_CHECKING:
    from coe.experts.schema import LocalServer

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
    start_timeout_s: float = 400.0
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def of(cls, spec: LocalServer, log_path: Path | None = None) -> VllmServer:
        """The server a `LocalServer` entry describes; its model may be converted once (~30 s)."""
        return cls(
            resolve_model(spec.model),
            spec.port,
            spec.served_model_name,
            cpu_core=spec.cpu_core,
            extra_args=list(spec.args),
            log_path=log_path,
            start_timeout_s=spec.start_timeout_s,
        )

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

    async def wait_healthy(self, timeout_s: float | None = None) -> float:
        """Poll /health until 200 (at most `start_timeout_s`); returns the seconds waited."""
        limit = self.start_timeout_s if timeout_s is None else timeout_s
        url = f"{self.base_url}/health"
        last: UpstreamError | None = None
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() - started < limit:
                if self.process is not None and self.process.poll() is not None:
                    raise UpstreamError(
                        f"vLLM server {self.served_name} exited with code "
                        f"{self.process.returncode} during start-up"
                        + (f"; see {self.log_path}" if self.log_path else ""),
                        url=self.base_url,
                    )
                # Refusals are expected while the server boots; the last one explains a timeout.
                try:
                    resp = await client.get(url)
                except httpx.HTTPError as err:
                    last = transport_error(err, f"GET {url}", url=self.base_url)
                else:
                    if resp.status_code == 200:
                        return time.monotonic() - started
                    last = status_error(
                        resp.status_code, resp.text, f"GET {url}", url=self.base_url
                    )
                await asyncio.sleep(0.5)
        raise UpstreamError(
            f"vLLM server {self.served_name} not healthy after {limit:.0f} s"
            + (f" (last: {last.message})" if last else "")
            + (f"; see {self.log_path}" if self.log_path else ""),
            url=self.base_url,
        )

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
