"""Pools in compose: one pool service per pool, and the vLLM servers only it may call.

A pool belongs to its device. Its `service` must be the one compose service running
`coe pool serve` for it; the servers its controller drives (sleep `servers`, static
`upstreams`, lora `base_url`: each controller class says, `servers_param` and
`driven_urls`) are vLLM services that gateways and workers never call,
or "at most C resident" would hold in one process only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from coe.deploy.services import ComposeService, not_a_service, resolve
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, ExpertSpec
from coe.pool.controllers.base import SwapController
from coe.pool.registry import ControllerRegistry


@dataclass(frozen=True)
class Upstream:
    """A server a pool's controller drives: only its pool service may call it."""

    pool: str
    controller: str
    where: str  # the config path naming it, e.g. pools.gpu0.params.servers.coder
    url: str
    expert: ExpertSpec | None  # whose model it must serve; None: not known statically
    sleep_mode: bool = False  # the controller needs --enable-sleep-mode and the dev endpoints

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def controller_class(
    kind: str, controllers: ControllerRegistry | None = None
) -> type[SwapController]:
    """The class behind a controller kind, asked what its pool's deploy checks are; a kind
    not installed here (a `controllers_dirs` file) gets the base class's: every URL in its
    params is a server it drives."""
    registry = controllers or ControllerRegistry.load()
    try:
        return registry.get(kind)
    except ConfigError:
        return SwapController


def pool_upstreams(
    config: CoeConfig, source: str, controllers: ControllerRegistry | None = None
) -> tuple[list[Upstream], list[str]]:
    """Every server the pools' controllers drive, and the members left without one."""
    upstreams: list[Upstream] = []
    problems: list[str] = []
    registry = controllers or (ControllerRegistry.load() if config.pools else None)
    for name, pool in config.pools.items():
        cls = controller_class(pool.controller, registry)
        members = [e for e in config.experts if e.pool == name]
        prefix = f"pools.{name}.params"
        key = cls.servers_param
        if key is not None:
            table = pool.params.get(key)
            table = table if isinstance(table, Mapping) else {}
            missing = [e.name for e in members if not isinstance(table.get(e.name), str)]
            if missing:
                problems.append(
                    f"{source}: {prefix}.{key}: no server for {', '.join(missing)} (the "
                    f"{pool.controller} controller calls each member's own vLLM server; "
                    "its endpoint is the pool service)"
                )
            upstreams += [
                Upstream(
                    name,
                    pool.controller,
                    f"{prefix}.{key}.{e.name}",
                    str(table[e.name]),
                    e,
                    cls.needs_sleep_mode,
                )
                for e in members
                if e.name not in missing
            ]
        else:
            upstreams += [
                Upstream(name, pool.controller, f"{prefix}.{path}", url, None, cls.needs_sleep_mode)
                for path, url in cls.driven_urls(pool.params)
            ]
    return upstreams, problems


def check_pool_services(
    config: CoeConfig, services: Mapping[str, ComposeService], source: str
) -> list[str]:
    """Each pool's `service` is one compose service running `coe pool serve` for it, on
    that port, and no other service (or replica) serves the pool too."""
    problems: list[str] = []
    for name, pool in config.pools.items():
        url = pool.service_url
        parts = urlsplit(url)
        host = parts.hostname or ""
        service = resolve(host, services)
        serving = [s for s in services.values() if s.serves_pool(name)]
        if len(serving) > 1:
            problems.append(
                f"{source}: pool {name} is served by {len(serving)} pool services "
                f"({', '.join(s.name for s in serving)}); run exactly one, or each keeps up "
                f"to {pool.capacity} resident on the same device"
            )
        replicated = [s for s in serving if s.replicas > 1]
        problems += [
            f"{source}: pool {name}: {s.where()} runs {s.replicas} replicas; a pool service "
            f"runs once, or each replica keeps up to {pool.capacity} resident"
            for s in replicated
        ]
        if service is None:
            problems.append(not_a_service(f"{source}: pools.{name}.service", url, host, services))
            continue
        if not service.is_pool_service:
            problems.append(
                f"{source}: pools.{name}.service {url} points at {service.where()}, which "
                "does not run `coe pool serve`"
            )
            continue
        port = _port(url)
        if not service.sets_port:  # it listens where its pools' service URLs say, if one port
            ports = {
                other: _port(spec.service_url)
                for other, spec in config.pools.items()
                if service.serves_pool(other)
            }
            if len(set(ports.values())) > 1:
                listed = ", ".join(f"{n} at {p}" for n, p in sorted(ports.items()))
                problems.append(
                    f"{source}: pools.{name}.service {url} points at {service.where()}, "
                    f"which runs `coe pool serve` without --port for pools on different "
                    f"ports ({listed}); give each port its own pool service"
                )
        elif port != service.port:
            problems.append(
                f"{source}: pools.{name}.service {url} uses port {port} but "
                f"{service.where()} listens on {service.port}"
            )
        if not service.serves_pool(name):
            problems.append(
                f"{source}: pools.{name}.service {url} points at {service.where()}, which "
                f"serves only {_plural('pool', service.pools)} (add --pool {name})"
            )
    return problems


def check_upstreams(
    upstreams: Iterable[Upstream], services: Mapping[str, ComposeService], source: str
) -> list[str]:
    """Each server a controller drives is a vLLM service on that port serving the expert's
    model; sleep pools' servers have sleep mode and the dev endpoints."""
    problems: list[str] = []
    for up in upstreams:
        service = resolve(up.host, services)
        if service is None:
            problems.append(not_a_service(f"{source}: {up.where}", up.url, up.host, services))
            continue
        if not service.is_vllm:
            problems.append(
                f"{source}: {up.where} {up.url} points at {service.where()}, "
                "which is not a vLLM expert"
            )
            continue
        parts = urlsplit(up.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if port != service.port:
            problems.append(
                f"{source}: {up.where} {up.url} uses port {port} but {service.where()} "
                f"listens on {service.port}"
            )
        if up.expert is None:
            continue
        expert = up.expert
        if expert.model not in service.served_names:
            served = ", ".join(service.served_names) or "nothing named"
            problems.append(
                f"{source}: expert {expert.name} asks for model {expert.model!r} but "
                f"{service.where()} serves {served} (--served-model-name)"
            )
        if up.sleep_mode:
            if not service.sleep_mode:
                problems.append(
                    f"{source}: expert {expert.name} is in sleep pool {up.pool} but "
                    f"{service.where()} is not started with --enable-sleep-mode"
                )
            if service.environment.get("VLLM_SERVER_DEV_MODE") != "1":
                problems.append(
                    f"{source}: expert {expert.name} is in sleep pool {up.pool} but "
                    f"{service.where()} lacks VLLM_SERVER_DEV_MODE=1 (no /sleep, /wake_up)"
                )
    return problems


def check_direct_calls(
    config: CoeConfig,
    driven: Mapping[str, tuple[Upstream, str]],
    services: Mapping[str, ComposeService],
    source: str,
) -> list[str]:
    """No expert outside a pool calls a server a pool drives (`driven`: service name ->
    the upstream naming it and its pool service URL)."""
    problems: list[str] = []
    for expert in config.experts:
        if expert.pool is not None:
            continue
        for url in expert.base_urls():
            service = resolve(urlsplit(url).hostname or "", services)
            if service is None or service.name not in driven:
                continue
            up, pool_url = driven[service.name]
            problems.append(
                f"{source}: expert {expert.name} endpoint {url} calls {service.where()} "
                f"directly, but pool {up.pool} drives it ({up.where}): gateways and workers "
                f"must go through the pool service {pool_url} (put {expert.name} in pool "
                f"{up.pool}) or use a server of their own"
            )
    return problems


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _plural(word: str, names: tuple[str, ...]) -> str:
    return f"{word}{'s' if len(names) != 1 else ''} {', '.join(names)}"


def explain_outdated(data: Any, source: str, services: Mapping[str, ComposeService]) -> list[str]:
    """Why an experts file written before pool services is refused, in compose terms: a
    pool without `service`, a pooled expert still calling its vLLM server. Empty when the
    file has neither (its ConfigError is then about something else)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("pools"), Mapping):
        return []
    pools = {str(k): v if isinstance(v, Mapping) else {} for k, v in data["pools"].items()}
    problems: list[str] = []
    urls: dict[str, str] = {}
    for name, pool in pools.items():
        if isinstance(pool.get("service"), str):
            urls[name] = pool["service"].rstrip("/")
            continue
        serving = [s for s in services.values() if s.serves_pool(name)]
        if len(serving) == 1:
            urls[name] = f"http://{serving[0].name}:{serving[0].port}"
            hint = f" (service {serving[0].name} runs `coe pool serve` for it)"
        else:
            urls[name], hint = "http://<pool service>:<port>", ""
        problems.append(
            f"{source}: pools.{name} has no service (an experts file from before pool "
            f"services): add `service: {urls[name]}`{hint} and point the pool's experts at it"
        )
    for expert in data.get("experts") or []:
        if not isinstance(expert, Mapping) or not isinstance(expert.get("pool"), str):
            continue
        who, pool_name = expert.get("name"), expert["pool"]
        service = urls.get(pool_name)
        endpoints = [str(u).rstrip("/") for u in expert.get("endpoints") or []]
        if service is None or endpoints == [service]:
            continue
        key = controller_class(str(pools[pool_name].get("controller", "static"))).servers_param
        move = f" and name {', '.join(endpoints)} in pools.{pool_name}.params.{key}.{who}"
        problems.append(
            f"{source}: expert {who} is in pool {pool_name} but calls "
            f"{', '.join(endpoints) or 'nothing'} directly (an experts file from before pool "
            f"services): set its endpoints to [{service}]{move if key and endpoints else ''}"
        )
    return problems
