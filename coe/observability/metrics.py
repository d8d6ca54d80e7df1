"""Prometheus metrics on a registry owned by the app (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

if TYPE_CHECKING:
    from coe.pool.metrics import PoolMetrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
GROUP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "coe_requests", "HTTP requests served", ["method", "path", "status"], registry=r
        )
        self.latency = Histogram(
            "coe_request_latency_seconds",
            "Request latency (to the last byte)",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("coe_requests_in_flight", "Requests being served", registry=r)
        self.tokens = Counter(
            "coe_tokens", "Tokens used, by expert and kind", ["expert", "kind"], registry=r
        )
        self.routed = Counter(
            "coe_route_decisions", "Routing choices", ["router", "expert"], registry=r
        )
        self.fallbacks = Counter(
            "coe_fallbacks", "Experts skipped after a failure", ["expert"], registry=r
        )
        self.expert_latency = Histogram(
            "coe_expert_latency_seconds",
            "Expert calls, one replica attempt each, to the whole answer (stream end)",
            ["expert", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "coe_rate_limited", "Requests refused by a key's rate limit", registry=r
        )
        self.batch_items = Counter(
            "coe_batch_items",
            "Batch lines answered by this process's workers",
            ["status"],
            registry=r,
        )
        self.batch_unit_seconds = Histogram(
            "coe_batch_unit_seconds",
            "Time to process one batch work unit, by phase (route, run, aggregate)",
            ["phase"],
            buckets=UNIT_BUCKETS,
            registry=r,
        )
        self.batch_unit_errors = Counter(
            "coe_batch_unit_errors",
            "Batch units whose processing raised; each is retried until it is given up",
            ["phase"],
            registry=r,
        )
        self.batch_units_given_up = Counter(
            "coe_batch_units_given_up",
            "Batch units given up after too many deliveries (their lines: batch_unit_failed)",
            ["phase"],
            registry=r,
        )
        self.batch_expert_groups = Histogram(
            "coe_batch_expert_groups",
            "Expert groups planned per job when its run units are queued: the model loads "
            "the job needs when its experts share a device",
            buckets=GROUP_BUCKETS,
            registry=r,
        )
        self.batch_queue_depth = Gauge(
            "coe_batch_queue_depth",
            "Units on the batch work stream: waiting for a worker, or pending (being worked)",
            ["state"],
            registry=r,
        )
        self.batch_requeued = Counter(
            "coe_batch_sweeper_requeued",
            "Jobs found with no work queued whose missing work the sweeper queued again",
            registry=r,
        )
        self.registry_version = Gauge(
            "coe_registry_version", "Expert registry version seen by this replica", registry=r
        )

    def attach_pools(self, pool_metrics: PoolMetrics) -> None:
        """Pools keep their own figures; export them at scrape time."""
        from coe.observability.pool_collector import PoolCollector

        self.registry.register(PoolCollector(pool_metrics))

    def observe_route(self, router: str, experts: list[str]) -> None:
        for expert in experts:
            self.routed.labels(router, expert).inc()

    def observe_usage(self, expert: str, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            value = usage.get(kind)
            if isinstance(value, int) and value > 0:
                self.tokens.labels(expert, kind.removesuffix("_tokens")).inc(value)

    def observe_expert_call(self, expert: str, seconds: float, ok: bool) -> None:
        """`ExpertClient`'s observer: one replica attempt."""
        self.expert_latency.labels(expert, "ok" if ok else "error").observe(seconds)

    def observe_fallbacks(self, experts: list[str]) -> None:
        for expert in experts:
            self.fallbacks.labels(expert).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose these metrics on their own port (processes without the gateway: workers)."""
        start_http_server(port, addr=host, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
