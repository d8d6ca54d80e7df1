"""Who can reach the gateway a compose file publishes: a port open on every interface must
not serve the chat API without keys, nor metrics without a token.

Values are read as compose would interpolate them, from `env` (the shell's variables) or
else the `${VAR:-default}` default written in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coe.deploy.services import parse_services

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?)([-?+])([^}]*))?\}|\$(\w+)")
_ALL_INTERFACES = {"", "0.0.0.0", "::", "[::]"}
FRONT_ROLES = ("gateway", "lb")  # the services that answer the chat API to the outside


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """`value` with `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}` and `$VAR`
    replaced as compose does (a missing required variable reads as empty here)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(5)
        colon, op, word = match.group(2), match.group(3), match.group(4) or ""
        given = env.get(name)
        unset = given is None or (colon == ":" and given == "")
        if op == "-":
            return word if unset else str(given)
        if op == "+":
            return "" if unset else word
        return "" if given is None else given

    return _VARIABLE.sub(one, value)


@dataclass(frozen=True)
class Published:
    host_ip: str
    spec: str  # as written, for messages

    @property
    def everywhere(self) -> bool:
        return self.host_ip in _ALL_INTERFACES


def published_ports(spec: Mapping[str, Any], env: Mapping[str, str]) -> list[Published]:
    """The service's `ports`, short ("[ip:]host:container") or long syntax, interpolated."""
    out = []
    for entry in spec.get("ports") or []:
        if isinstance(entry, Mapping):
            host_ip = interpolate(str(entry.get("host_ip", "")), env)
            out.append(Published(host_ip, str(dict(entry))))
            continue
        text = interpolate(str(entry), env).split("/", 1)[0]
        host_ip = ""
        if text.startswith("["):  # [::1]:8000:8000
            host_ip, _, text = text[1:].partition("]")
        elif text.count(":") >= 2:
            host_ip = text.rsplit(":", 2)[0]
        out.append(Published(host_ip, str(entry)))
    return out


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def check_exposure(compose: Mapping[str, Any], env: Mapping[str, str] | None = None) -> list[str]:
    """A gateway (or the balancer in front of it) published on every interface must require
    API keys (COE_REQUIRE_API_KEY) and guard /metrics (COE_METRICS_TOKEN)."""
    env = env or {}
    services = parse_services(compose)
    gateways = [s for s in services.values() if (s.role or s.name) == "gateway"]
    keys_off = [
        s.name
        for s in gateways
        if not _truthy(interpolate(s.environment.get("COE_REQUIRE_API_KEY", ""), env))
    ]
    metrics_open = [
        s.name for s in gateways if not interpolate(s.environment.get("COE_METRICS_TOKEN", ""), env)
    ]
    problems: list[str] = []
    for name, spec in compose["services"].items():
        if (services[str(name)].role or name) not in FRONT_ROLES:
            continue
        for port in published_ports(spec, env):
            if not port.everywhere:
                continue
            where = f"docker-compose.yml: service {name} publishes {port.spec!r} on every interface"
            if keys_off:
                problems.append(
                    f"{where} while {', '.join(keys_off)} serves the chat API without keys "
                    "(COE_REQUIRE_API_KEY=0): bind it to 127.0.0.1 or require API keys"
                )
            if metrics_open:
                problems.append(
                    f"{where} while {', '.join(metrics_open)} serves /metrics to anyone "
                    "(no COE_METRICS_TOKEN): set a metrics token or bind it to 127.0.0.1"
                )
    return problems
