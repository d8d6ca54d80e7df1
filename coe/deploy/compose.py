"""Keep docker-compose.yml and the compose-flavoured experts files in step.

Pure functions over parsed YAML: every place an experts file and the compose file
disagree, as readable messages. Experts outside pools call vLLM services directly; a
pool's experts call its pool service, and only that service calls the pool's servers
(`coe.deploy.pools`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from coe.deploy.exposure import check_exposure
from coe.deploy.pools import (
    Upstream,
    check_direct_calls,
    check_pool_services,
    check_upstreams,
    explain_outdated,
    pool_upstreams,
)
from coe.deploy.services import ComposeService, not_a_service, parse_services, resolve
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, load_config


def check_config(
    config: CoeConfig, compose: Mapping[str, Any], source: str = "experts file"
) -> list[str]:
    """Mismatches between one compose-flavoured experts file and docker-compose.yml.

    Every upstream host must be a compose service (or a network alias of one), on the port
    it listens on, serving the expert's model. A pool's `service` must run `coe pool serve`
    for it, alone; its controller's servers must be vLLM services no expert outside the
    pool calls, with sleep mode and VLLM_SERVER_DEV_MODE=1 for a `sleep` pool. Every vLLM
    service of the profiles this file uses must be used by one of its experts or pools.
    """
    services = parse_services(compose)
    problems: list[str] = []
    used: set[str] = set()
    for expert in config.experts:
        if expert.pool is not None:  # its endpoint is its pool's service, checked below
            continue
        for url in expert.base_urls():
            who = f"{source}: expert {expert.name}"
            problems += _check_endpoint(who, url, expert.model, services)
            service = resolve(urlsplit(url).hostname or "", services)
            if service is not None:
                used.add(service.name)
    upstreams, missing = pool_upstreams(config, source)
    problems += missing
    problems += check_upstreams(upstreams, services, source)
    problems += check_pool_services(config, services, source)
    problems += check_direct_calls(config, driven_servers([config], services), services, source)
    used.update(s.name for u in upstreams if (s := resolve(u.host, services)) is not None)
    profiles = {p for name in used for p in services[name].profiles}
    for service in services.values():
        in_scope = not service.profiles or bool(profiles & set(service.profiles))
        if service.is_vllm and in_scope and service.name not in used:
            problems.append(
                f"{source}: vLLM {service.where()} is not an endpoint of any expert "
                f"(add http://{service.name}:{service.port} to an expert's endpoints or to "
                "a pool's servers)"
            )
    return problems


def _check_endpoint(
    who: str, url: str, model: str, services: Mapping[str, ComposeService]
) -> list[str]:
    """What is wrong with one endpoint of an expert outside pools."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    service = resolve(host, services)
    if service is None:
        return [not_a_service(f"{who} endpoint", url, host, services)]
    if not service.is_vllm:
        return [f"{who} endpoint {url} points at {service.where()}, which is not a vLLM expert"]
    problems: list[str] = []
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if port != service.port:
        problems.append(
            f"{who} endpoint {url} uses port {port} but {service.where()} listens on {service.port}"
        )
    if model not in service.served_names:
        served = ", ".join(service.served_names) or "nothing named"
        problems.append(
            f"{who} asks for model {model!r} but {service.where()} serves "
            f"{served} (--served-model-name)"
        )
    return problems


def driven_servers(
    configs: Sequence[CoeConfig], services: Mapping[str, ComposeService]
) -> dict[str, tuple[Upstream, str]]:
    """Compose service name -> (the pool upstream naming it, that pool's service URL)."""
    out: dict[str, tuple[Upstream, str]] = {}
    for config in configs:
        for up in pool_upstreams(config, "")[0]:
            service = resolve(up.host, services)
            if service is not None and service.is_vllm:
                out.setdefault(service.name, (up, config.pools[up.pool].service_url))
    return out


def check_compose(
    configs: Mapping[str, CoeConfig],
    compose: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Every experts file against docker-compose.yml, plus what holds across them all.

    configs maps a file name (used in messages) to its parsed config; `env` holds the
    variables compose would interpolate (default: none, so the file's defaults count).
    """
    services = parse_services(compose)
    problems: list[str] = []
    used: set[str] = set()
    driven = driven_servers(list(configs.values()), services)
    for source, config in configs.items():
        problems.extend(check_config(config, compose, source))
        problems.extend(check_direct_calls(config, driven, services, source))
        hosts = [urlsplit(u).hostname or "" for e in config.experts for u in e.base_urls()]
        hosts += [u.host for u in pool_upstreams(config, source)[0]]
        used.update(s.name for h in hosts if (s := resolve(h, services)) is not None)
    for service in services.values():
        if service.is_vllm and service.name not in used:
            problems.append(
                f"docker-compose.yml: vLLM {service.where()} is referenced by no experts file "
                f"checked ({', '.join(configs) or 'none given'}); pass every experts file the "
                "compose profiles serve, or remove the service"
            )
    problems.extend(_check_idle_pool_services(configs, services))
    problems.extend(_check_shared_store(services))
    problems.extend(check_exposure(compose, env))
    return list(dict.fromkeys(problems))


def _check_idle_pool_services(
    configs: Mapping[str, CoeConfig], services: Mapping[str, ComposeService]
) -> list[str]:
    """A pool service for a pool no experts file defines serves nothing."""
    pools = {name for config in configs.values() for name in config.pools}
    problems: list[str] = []
    for service in services.values():
        if not service.is_pool_service:
            continue
        idle = [p for p in service.pools if p not in pools]
        if idle or not (service.pools or pools):
            problems.append(
                f"docker-compose.yml: {service.where()} runs `coe pool serve` for "
                f"{'pool ' + ', '.join(idle) if idle else 'every pool'}, but no experts file "
                f"checked ({', '.join(configs) or 'none given'}) defines "
                f"{'it' if len(idle) <= 1 else 'them'}"
            )
    return problems


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


def check_files(
    paths: Sequence[Path | str], compose: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> list[str]:
    """check_compose over experts files read from disk. A file written before pool services
    (a pool without `service`, pooled experts calling their vLLM servers) is explained in
    compose terms instead of failing on the schema; a file wrong otherwise raises."""
    services = parse_services(compose)
    configs: dict[str, CoeConfig] = {}
    outdated: list[str] = []
    for path in paths:
        try:
            configs[str(path)] = load_config(path)
        except ConfigError as err:
            try:
                data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                raise err from None
            found = explain_outdated(data, str(path), services)
            if not found:
                raise
            outdated += found
    # Checked against the others, an outdated file's servers would look unused: fix it first.
    return outdated or check_compose(configs, compose, env)
