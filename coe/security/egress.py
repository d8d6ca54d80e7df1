"""Where the gateway may send requests: the egress policy for expert endpoints.

Registering an expert makes the gateway call its endpoints (and probe them), so an admin key
or an edited experts.yaml could aim it at a cloud metadata service and read the answers back.
By default link-local addresses (169.254.0.0/16, fe80::/10) and the well-known metadata
addresses and names are refused; loopback and private networks are allowed (local experts).
COE_EGRESS_ALLOW (CIDRs, host names) opens what is refused by default; COE_EGRESS_DENY closes
more, and wins over the allow list. Only http and https are allowed.

Host names are resolved (off the event loop, with a short timeout) and every address they
resolve to is checked too. Limits, honestly: the check runs when an expert is registered,
updated, probed or loaded from experts.yaml, not on every request, so a name that resolves
elsewhere later (DNS rebinding) is not caught; a name that does not resolve at check time is
let through (its server may not be up yet). Enforce egress in the network as well.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

from coe.config import Settings
from coe.errors import ConfigError, EgressRefused
from coe.security.redact import redact_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_SETTING = "COE_EGRESS_ALLOW"
DENY_SETTING = "COE_EGRESS_DENY"
SCHEMES = ("http", "https")
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
RESOLVE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Rules:
    """A list of CIDRs and host names (`.example.com` or `*.example.com`: any subdomain)."""

    networks: tuple[Network, ...] = ()
    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, setting: str) -> Rules:
        networks: list[Network] = []
        names: list[str] = []
        for raw in text.replace(";", ",").split(","):
            item = raw.strip().lower().rstrip(".")
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            name = item.removeprefix("*")
            label = name.removeprefix(".")
            if not label or not all(c.isalnum() or c in "-." for c in label):
                raise ConfigError(
                    f"{setting}: {raw.strip()!r} is neither a CIDR, an address nor a host name"
                )
            names.append(name)
        return cls(tuple(networks), tuple(names))

    def match(self, host: str, addresses: Iterable[Address]) -> str | None:
        """The rule that matches the host name or any of its addresses, as written."""
        for name in self.names:
            if host == name or (name.startswith(".") and host.endswith(name)):
                return name
        for address in addresses:
            for net in self.networks:
                if address.version == net.version and address in net:
                    return str(net)
        return None

    def covers(self, address: Address) -> bool:
        return any(a.version == address.version and address in a for a in self.networks)


@dataclass(frozen=True)
class EgressPolicy:
    allow: Rules = Rules()
    deny: Rules = Rules()
    resolve_timeout_s: float = RESOLVE_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EgressPolicy:
        """The policy of `settings` (read from the environment when None)."""
        settings = settings or Settings()
        return cls(
            allow=Rules.parse(settings.egress_allow, ALLOW_SETTING),
            deny=Rules.parse(settings.egress_deny, DENY_SETTING),
            resolve_timeout_s=settings.egress_resolve_timeout_s,
        )

    def refusal(self, url: str, addresses: Sequence[Address]) -> str | None:
        """Why `url` (whose host resolved to `addresses`) is refused, or None if it is not."""
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower().rstrip(".")
        except ValueError:
            return f"endpoint {shown} is not a valid URL"
        if parts.scheme.lower() not in SCHEMES:
            return (
                f"endpoint {shown} uses scheme {parts.scheme or '(none)'!r}; experts are "
                "reached over http or https only"
            )
        if not host:
            return f"endpoint {shown} names no host"
        literal = _literal(host)
        targets = [literal] if literal is not None else list(addresses)
        denied = self.deny.match(host, targets)
        if denied is not None:
            return (
                f"endpoint {shown} is refused: it matches {denied!r} in {DENY_SETTING}, "
                f"which wins over {ALLOW_SETTING}"
            )
        if self.allow.match(host, ()) is not None:
            return None  # the operator allowed this host by name, whatever it resolves to
        if host in METADATA_NAMES:
            return _default_refusal(shown, "a cloud metadata host name", host)
        for address in targets:
            why = _refused_by_default(address)
            if why is not None and not self.allow.covers(address):
                seen = "is" if literal is not None else f"resolves to {address}, which is"
                return _default_refusal(shown, why, str(address), seen)
        return None

    def first_refused(self, urls: Iterable[str]) -> tuple[str, str] | None:
        """The first refused URL and why, resolving every host name at once (blocking)."""
        urls = list(urls)
        hosts = {h for h in (_host(u) for u in urls) if h and _literal(h) is None}
        resolved = resolve_all(hosts, self.resolve_timeout_s)
        for url in urls:
            why = self.refusal(url, resolved.get(_host(url) or "", []))
            if why is not None:
                return url, why
        return None

    def check(self, urls: Iterable[str]) -> None:
        """Raise EgressRefused for the first refused URL (blocking: call it from a thread,
        as `check_async` does)."""
        refused = self.first_refused(urls)
        if refused is not None:
            raise EgressRefused(refused[1], param="endpoints")

    async def check_async(self, urls: Iterable[str]) -> None:
        """`check` off the event loop."""
        await asyncio.to_thread(self.check, list(urls))


def _default_refusal(shown: str, why: str, rule: str, seen: str = "is") -> str:
    return (
        f"endpoint {shown} {seen} {why}; experts are not reached there by default. "
        f"To allow it, add {rule} to {ALLOW_SETTING}"
    )


def _refused_by_default(address: Address) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(address.version == n.version and address in n for n in LINK_LOCAL):
        return "a link-local address"
    return None


def _host(url: str) -> str | None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower().rstrip(".") if host else None


def _literal(host: str) -> Address | None:
    """The address `host` spells, if any; IPv4-mapped IPv6 (::ffff:a.b.c.d) as IPv4, so no
    rule can be sidestepped by spelling an address the other way."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _resolve(host: str) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []  # does not resolve (yet): nothing to check
    out: list[Address] = []
    for info in infos:
        address = _literal(str(info[4][0]))
        if address is not None and address not in out:
            out.append(address)
    return out


def resolve_all(hosts: Iterable[str], timeout_s: float) -> dict[str, list[Address]]:
    """Every host's addresses, resolved at once; a host still resolving after `timeout_s`
    counts as unresolved (the thread is left to finish on its own)."""
    hosts = sorted(set(hosts))
    if not hosts:
        return {}
    pool = ThreadPoolExecutor(max_workers=min(8, len(hosts)), thread_name_prefix="egress-dns")
    try:
        futures = {h: pool.submit(_resolve, h) for h in hosts}
        deadline = time.monotonic() + timeout_s
        out: dict[str, list[Address]] = {}
        for host, future in futures.items():
            try:
                out[host] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                out[host] = []
        return out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
