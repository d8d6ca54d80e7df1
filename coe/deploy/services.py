"""What the compose checks need to know about docker-compose.yml, parsed once.

Which services are vLLM servers and what they serve, which run a pool service and for
which pools; compose's short and long forms (strings or lists, mappings or KEY=VALUE)
read the same way.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coe.errors import ConfigError

DEFAULT_VLLM_PORT = 8000
DEFAULT_POOL_PORT = 8200  # what docker-compose.yml gives its pool services (and generation)
ROLE_LABEL = "coe.role"


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
    replicas: int = 1

    @property
    def port(self) -> int:
        """The port it listens on: --port, else vLLM's default; a pool service without
        --port listens on its pools' `service` port (DEFAULT_POOL_PORT stands in here)."""
        value = _flag_values(self.args, "--port")
        if value and value[0].isdigit():
            return int(value[0])
        return DEFAULT_POOL_PORT if self.is_pool_service else DEFAULT_VLLM_PORT

    @property
    def sets_port(self) -> bool:
        return bool(_flag_values(self.args, "--port"))

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

    @property
    def is_pool_service(self) -> bool:
        """Runs `coe pool serve` (the image's entrypoint is `coe`, or the command says it)."""
        return "pool serve" in " ".join(self.args)

    @property
    def pools(self) -> tuple[str, ...]:
        """The pools a pool service serves (`--pool`, repeatable); empty: all of its file's."""
        return tuple(_flag_values(self.args, "--pool"))

    def serves_pool(self, pool: str) -> bool:
        return self.is_pool_service and (not self.pools or pool in self.pools)

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


def _replicas(spec: Mapping[str, Any]) -> int:
    """`deploy.replicas` or `scale`; 1 when unset or interpolated (unknown until run)."""
    deploy = spec.get("deploy")
    value = deploy.get("replicas") if isinstance(deploy, Mapping) else None
    value = spec.get("scale", value)
    try:
        return int(value) if value is not None else 1
    except (TypeError, ValueError):
        return 1


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
            replicas=_replicas(spec),
        )
    return out


def resolve(host: str, services: Mapping[str, ComposeService]) -> ComposeService | None:
    """The service a URL host names: a service name or a network alias of one."""
    if host in services:
        return services[host]
    return next((s for s in services.values() if host in s.aliases), None)


def not_a_service(who: str, url: str, host: str, services: Mapping[str, ComposeService]) -> str:
    return (
        f"{who} {url}: host {host!r} is not a service in docker-compose.yml "
        f"(services: {', '.join(sorted(services))})"
    )


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
