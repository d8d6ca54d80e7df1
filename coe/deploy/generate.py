"""Compose `services:` entries for what an experts file points at, to paste into
docker-compose.yml: one vLLM service per server host, one pool service per pool service."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

from coe.deploy.pools import pool_upstreams
from coe.deploy.services import DEFAULT_POOL_PORT, DEFAULT_VLLM_PORT, ROLE_LABEL
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig

MODEL_FOLDER = "/models/models/smollm2-135m-instruct"
POOL_CONFIG = "/etc/coe/experts.yaml"  # where services/pool/Dockerfile puts the experts file
GPU_RESERVATION = {
    "resources": {
        "reservations": {
            "devices": [
                {"driver": "nvidia", "device_ids": ["${COE_GPU_ID:-0}"], "capabilities": ["gpu"]}
            ]
        }
    }
}


def _host(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or default_port


def expert_services(
    config: CoeConfig, flavour: str = "cpu", model_folder: str = MODEL_FOLDER
) -> dict[str, Any]:
    """A compose `services:` block for the config: one vLLM service per server host (the
    endpoints of experts outside pools, the servers of the pools' controllers), each
    serving the models of the experts on it, and one pool service per pool `service` host.

    gpu vLLM services get sleep mode, VLLM_SERVER_DEV_MODE and a GPU reservation; a lora
    pool's server gets runtime LoRA loading.
    """
    if flavour not in ("cpu", "gpu"):
        raise ConfigError(f"flavour must be cpu or gpu, not {flavour!r}")
    servers: dict[str, dict[str, Any]] = {}

    def server(url: str) -> dict[str, Any]:
        host, port = _host(url, DEFAULT_VLLM_PORT)
        return servers.setdefault(host, {"port": port, "models": [], "max_loras": 0})

    for expert in config.experts:
        if expert.pool is None:
            for url in expert.base_urls():
                entry = server(url)
                if expert.model not in entry["models"]:
                    entry["models"].append(expert.model)
    pool_hosts: dict[str, dict[str, Any]] = {}
    upstreams, _ = pool_upstreams(config, "")
    for name, pool in config.pools.items():
        host, port = _host(pool.service_url, DEFAULT_POOL_PORT)
        entry = pool_hosts.setdefault(host, {"port": port, "pools": [], "servers": []})
        entry["pools"].append(name)
        for up in (u for u in upstreams if u.pool == name):
            vllm = server(up.url)
            if up.expert is not None and up.expert.model not in vllm["models"]:
                vllm["models"].append(up.expert.model)
            if up.controller == "lora":
                vllm["max_loras"] = int(pool.params.get("max_loras", pool.capacity))
            if up.host not in entry["servers"]:
                entry["servers"].append(up.host)
    gpu_share = round(0.9 / max(len(servers), 1), 2)
    out = {
        host: _vllm_service(entry, flavour, model_folder, gpu_share)
        for host, entry in servers.items()
    }
    out.update({host: _pool_service(entry, flavour) for host, entry in pool_hosts.items()})
    return out


def _vllm_service(
    entry: dict[str, Any], flavour: str, model_folder: str, gpu_share: float
) -> dict[str, Any]:
    args = ["--model", model_folder]
    if entry["models"]:
        args += ["--served-model-name", *entry["models"]]
    if entry["port"] != DEFAULT_VLLM_PORT:
        args += ["--port", str(entry["port"])]
    environment = {"HF_HUB_OFFLINE": "1"}
    if entry["max_loras"]:
        args += ["--enable-lora", "--max-lora-rank", "8", "--max-loras", str(entry["max_loras"])]
        environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    service: dict[str, Any] = {
        "build": {"context": ".", "dockerfile": f"services/expert-{flavour}/Dockerfile"},
        "image": f"coe-expert-{flavour}:${{COE_VERSION:-latest}}",
        "profiles": [flavour],
        "restart": "unless-stopped",
        "labels": {ROLE_LABEL: "expert"},
        "command": args,
    }
    if flavour == "gpu":
        service["command"] += ["--enable-sleep-mode", "--gpu-memory-utilization", str(gpu_share)]
        service["environment"] = {"VLLM_SERVER_DEV_MODE": "1", **environment}
        service["ipc"] = "host"
        service["deploy"] = copy.deepcopy(GPU_RESERVATION)  # no YAML aliases when dumped
    else:
        service["environment"] = {"VLLM_CPU_OMP_THREADS_BIND": "0", **environment}
    return service


def _pool_service(entry: dict[str, Any], flavour: str) -> dict[str, Any]:
    command = ["pool", "serve", "--config", POOL_CONFIG, "--host", "0.0.0.0"]
    command += ["--port", str(entry["port"])]
    for name in entry["pools"]:
        command += ["--pool", name]
    health = f"urllib.request.urlopen('http://127.0.0.1:{entry['port']}/health', timeout=4)"
    service: dict[str, Any] = {
        "build": {"context": ".", "dockerfile": "services/pool/Dockerfile"},
        "image": "coe-pool:${COE_VERSION:-latest}",
        "profiles": [flavour],
        "restart": "unless-stopped",
        "labels": {ROLE_LABEL: "pool"},
        "command": command,
        "healthcheck": {
            "test": ["CMD", "python", "-c", f"import urllib.request; {health}"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "30s",
        },
    }
    if entry["servers"]:
        service["depends_on"] = {
            host: {"condition": "service_healthy"} for host in entry["servers"]
        }
    return service
