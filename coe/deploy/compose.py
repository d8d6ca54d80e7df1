"""Keep docker-compose.yml and the compose-flavoured experts files in step.

Pure functions over parsed YAML: which services are vLLM experts, what they serve, and
every place an experts file and the compose file disagree (as readable messages).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from coe.errors import ConfigError
from coe.experts.schema import CoeConfig

DEFAULT_VLLM_PORT = 8000
ROLE_LABEL = "coe.role"
MODEL_FOLDER = "/models/models/smollm2-135m-instruct"


@dataclass(frozen=True)
class ComposeService:
    """What check-compose needs to know about one service of docker-compose.yml."""

    name: str
    role: str | None
    profiles: tuple[str, ...]
    args: tuple[str, ...]
    environment: Mapping[str, str]
    aliases: frozenset[str] = field(default_factory=frozenset)
    is_vllm: bool = False

    @property
    def port(self) -> int:
        value = _flag_values(self.args, "--port")
        return int(value[0]) if value and value[0].isdigit() else DEFAULT_VLLM_PORT

    @property
    def served_names(self) -> tuple[str, ...]:
        """--served-model-name values; vLLM defaults to the --model value."""
        names = _flag_values(self.args, "--served-model-name")
        if names:
            return tuple(names)
        model = _flag_values(self.args, "--model")
        return tuple(model[:1])

    @property
    def sleep_mode(self) -> bool:
        return "--enable-sleep-mode" in self.args

    def where(self) -> str:
        return f"service {self.name}" + (
            f" (profile {', '.join(self.profiles)})" if self.profiles else ""
        )


def _flag_values(args: Sequence[str], flag: str) -> list[str]:
    """Values after `flag` (up to the next --option), also `flag=value`."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            out.append(arg.split("=", 1)[1])
        elif arg == flag:
            for value in args[i + 1 :]:
                if value.startswith("--"):
                    break
                out.append(value)
    return out


def _as_args(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ConfigError(f"command/entrypoint must be a string or a list, got {type(value).__name__}")


def _as_mapping(value: Any) -> dict[str, str]:
    """Compose accepts environment and labels as a mapping or a list of KEY=VALUE."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        pairs = (str(item).split("=", 1) for item in value)
        return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}
    raise ConfigError(f"expected a mapping or a list of KEY=VALUE, got {type(value).__name__}")


def _aliases(networks: Any) -> frozenset[str]:
    if not isinstance(networks, Mapping):
        return frozenset()
    out: set[str] = set()
    for net in networks.values():
        if isinstance(net, Mapping):
            out.update(str(a) for a in net.get("aliases") or [])
    return frozenset(out)


def _looks_like_vllm(spec: Mapping[str, Any], args: Sequence[str], role: str | None) -> bool:
    if role is not None:
        return role == "expert"
    build = spec.get("build")
    dockerfile = str(build.get("dockerfile", "")) if isinstance(build, Mapping) else ""
    text = " ".join([str(spec.get("image", "")), dockerfile, *args])
    return "vllm" in text or "services/expert-" in text


def parse_services(compose: Mapping[str, Any]) -> dict[str, ComposeService]:
    """The services of a parsed docker-compose.yml (YAML merge keys already applied)."""
    services = compose.get("services")
    if not isinstance(services, Mapping) or not services:
        raise ConfigError("docker-compose.yml has no services")
    out: dict[str, ComposeService] = {}
    for name, spec in services.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"services.{name} must be a mapping")
        args = [*_as_args(spec.get("entrypoint")), *_as_args(spec.get("command"))]
        role = _as_mapping(spec.get("labels")).get(ROLE_LABEL)
        out[str(name)] = ComposeService(
            name=str(name),
            role=role,
            profiles=tuple(str(p) for p in spec.get("profiles") or []),
            args=tuple(args),
            environment=_as_mapping(spec.get("environment")),
            aliases=_aliases(spec.get("networks")),
            is_vllm=_looks_like_vllm(spec, args, role),
        )
    return out


def _urls(config: CoeConfig) -> Iterable[tuple[str, str, str]]:
    """(who, url, model or '') for every upstream URL the config names."""
    for expert in config.experts:
        for url in expert.base_urls():
            yield f"expert {expert.name}", url, expert.model
    for pool_name, pool in config.pools.items():
        for key, value in _walk(pool.params):
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                yield f"pools.{pool_name}.params.{key}", value, ""


def _walk(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def _resolve(host: str, services: Mapping[str, ComposeService]) -> ComposeService | None:
    if host in services:
        return services[host]
    return next((s for s in services.values() if host in s.aliases), None)


def check_config(
    config: CoeConfig, compose: Mapping[str, Any], source: str = "experts file"
) -> list[str]:
    """Mismatches between one compose-flavoured experts file and docker-compose.yml.

    Every upstream host must be a compose service (or a network alias of one), on the port
    it listens on, serving the expert's model; experts in a `sleep` pool need servers
    with sleep mode and VLLM_SERVER_DEV_MODE=1; every vLLM service of the profiles this
    file uses must be referenced by one of its experts.
    """
    services = parse_services(compose)
    problems: list[str] = []
    used: set[str] = set()
    for who, url, model in _urls(config):
        parts = urlsplit(url)
        host = parts.hostname or ""
        service = _resolve(host, services)
        if service is None:
            problems.append(
                f"{source}: {who} endpoint {url}: host {host!r} is not a service in "
                f"docker-compose.yml (services: {', '.join(sorted(services))})"
            )
            continue
        used.add(service.name)
        if not service.is_vllm:
            problems.append(
                f"{source}: {who} endpoint {url} points at {service.where()}, "
                "which is not a vLLM expert"
            )
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if port != service.port:
            problems.append(
                f"{source}: {who} endpoint {url} uses port {port} but {service.where()} "
                f"listens on {service.port}"
            )
        if model and model not in service.served_names:
            served = ", ".join(service.served_names) or "nothing named"
            problems.append(
                f"{source}: {who} asks for model {model!r} but {service.where()} serves "
                f"{served} (--served-model-name)"
            )
    problems.extend(_check_sleep_pools(config, services, source))
    profiles = {p for name in used for p in services[name].profiles}
    for service in services.values():
        in_scope = not service.profiles or bool(profiles & set(service.profiles))
        if service.is_vllm and in_scope and service.name not in used:
            problems.append(
                f"{source}: vLLM {service.where()} is not an endpoint of any expert "
                f"(add http://{service.name}:{service.port} to an expert's endpoints)"
            )
    return problems


def _check_sleep_pools(
    config: CoeConfig, services: Mapping[str, ComposeService], source: str
) -> list[str]:
    problems: list[str] = []
    sleepy = {n for n, p in config.pools.items() if p.controller == "sleep"}
    for expert in config.experts:
        if expert.pool not in sleepy:
            continue
        for url in expert.base_urls():
            service = _resolve(urlsplit(url).hostname or "", services)
            if service is None or not service.is_vllm:
                continue
            if not service.sleep_mode:
                problems.append(
                    f"{source}: expert {expert.name} is in sleep pool {expert.pool} but "
                    f"{service.where()} is not started with --enable-sleep-mode"
                )
            if service.environment.get("VLLM_SERVER_DEV_MODE") != "1":
                problems.append(
                    f"{source}: expert {expert.name} is in sleep pool {expert.pool} but "
                    f"{service.where()} lacks VLLM_SERVER_DEV_MODE=1 (no /sleep, /wake_up)"
                )
    return problems


def check_compose(configs: Mapping[str, CoeConfig], compose: Mapping[str, Any]) -> list[str]:
    """Every experts file against docker-compose.yml, plus what holds across them all.

    configs maps a file name (used in messages) to its parsed config.
    """
    services = parse_services(compose)
    problems: list[str] = []
    used: set[str] = set()
    for source, config in configs.items():
        problems.extend(check_config(config, compose, source))
        for _, url, _ in _urls(config):
            service = _resolve(urlsplit(url).hostname or "", services)
            if service is not None:
                used.add(service.name)
    for service in services.values():
        if service.is_vllm and service.name not in used:
            problems.append(
                f"docker-compose.yml: vLLM {service.where()} is referenced by no experts file "
                f"checked ({', '.join(configs) or 'none given'}); pass every experts file the "
                "compose profiles serve, or remove the service"
            )
    problems.extend(_check_shared_store(services))
    return list(dict.fromkeys(problems))


def _check_shared_store(services: Mapping[str, ComposeService]) -> list[str]:
    """Gateways and workers must share one Redis, or batch jobs are never picked up."""
    members = [s for s in services.values() if (s.role or s.name) in ("gateway", "worker")]
    urls = {s.name: s.environment.get("COE_REDIS_URL", "") for s in members}
    problems = [
        f"docker-compose.yml: service {name} sets no COE_REDIS_URL"
        for name, url in urls.items()
        if not url
    ]
    if len({u for u in urls.values() if u}) > 1:
        listed = ", ".join(f"{n}={u}" for n, u in sorted(urls.items()))
        problems.append(f"docker-compose.yml: gateway and worker use different Redis: {listed}")
    return problems


def load_compose(path: Path | str) -> dict[str, Any]:
    """Parse docker-compose.yml (YAML anchors and merge keys applied; no interpolation)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def expert_services(
    config: CoeConfig, flavour: str = "cpu", model_folder: str = MODEL_FOLDER
) -> dict[str, Any]:
    """A compose `services:` block with one vLLM service per endpoint host of the config.

    Each serves the models of the experts pointing at it; gpu services get sleep mode
    (for sleep pools), VLLM_SERVER_DEV_MODE and a GPU reservation.
    """
    if flavour not in ("cpu", "gpu"):
        raise ConfigError(f"flavour must be cpu or gpu, not {flavour!r}")
    hosts: dict[str, dict[str, Any]] = {}
    for expert in config.experts:
        for url in expert.base_urls():
            parts = urlsplit(url)
            entry = hosts.setdefault(
                parts.hostname or "", {"port": parts.port or DEFAULT_VLLM_PORT, "models": []}
            )
            if expert.model not in entry["models"]:
                entry["models"].append(expert.model)
    gpu_share = round(0.9 / max(len(hosts), 1), 2)
    out: dict[str, Any] = {}
    for host, entry in hosts.items():
        args = ["--model", model_folder, "--served-model-name", *entry["models"]]
        if entry["port"] != DEFAULT_VLLM_PORT:
            args += ["--port", str(entry["port"])]
        service: dict[str, Any] = {
            "build": {"context": ".", "dockerfile": f"services/expert-{flavour}/Dockerfile"},
            "image": f"coe-expert-{flavour}:${{COE_VERSION:-latest}}",
            "profiles": [flavour],
            "restart": "unless-stopped",
            "labels": {ROLE_LABEL: "expert"},
            "command": args,
        }
        if flavour == "gpu":
            service["command"] = [
                *args,
                "--enable-sleep-mode",
                "--gpu-memory-utilization",
                str(gpu_share),
            ]
            service["environment"] = {"VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"}
            service["ipc"] = "host"
            service["deploy"] = {
                "resources": {
                    "reservations": {
                        "devices": [
                            {
                                "driver": "nvidia",
                                "device_ids": ["${COE_GPU_ID:-0}"],
                                "capabilities": ["gpu"],
                            }
                        ]
                    }
                }
            }
        else:
            service["environment"] = {"VLLM_CPU_OMP_THREADS_BIND": "0", "HF_HUB_OFFLINE": "1"}
        out[host] = service
    return out
