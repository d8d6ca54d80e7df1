"""Prometheus metrics on a registry owned by the app (no process-global collectors)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)

from coe.config import Settings
from coe.errors import ConfigError, Unauthorized
from coe.security.tokens import (
    MIN_TOKEN_LENGTH,
    STRONG_HINT,
    bearer_token,
    is_weak,
    token_matches,
)

if TYPE_CHECKING:
    from coe.dispatch.timing import ExpertCall
    from coe.observability.batch_lines import JobLines, JobSource
    from coe.pipeline import Plan
    from coe.pool.metrics import PoolMetrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
GROUP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# Work of the gateway's own (a routing decision, the overhead around expert calls)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RATE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2500, 5000)
DIRECT = "direct"  # the pipeline label of a request that named an expert, not a pipeline


class Metrics:
    """One process's metrics. `gateway=False` (workers) keeps the families only a gateway
    moves (HTTP requests, streamed calls, rate limits) off the exported registry, so that
    every family a process exports is one it can move."""

    def __init__(self, gateway: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        g = r if gateway else CollectorRegistry()  # kept, not exported, outside a gateway
        self.requests = Counter(
            "coe_requests", "HTTP requests served", ["method", "path", "status"], registry=g
        )
        self.latency = Histogram(
            "coe_request_latency_seconds",
            "Request latency (to the last byte)",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=g,
        )
        self.in_flight = Gauge("coe_requests_in_flight", "Requests being served", registry=g)
        self.tokens = Counter(
            "coe_tokens", "Tokens used, by expert and kind", ["expert", "kind"], registry=r
        )
        self.routed = Counter(
            "coe_route_decisions", "Routing choices", ["router", "expert"], registry=r
        )
        self.route_seconds = Histogram(
            "coe_route_decision_seconds",
            "Time to decide a route (a batch line: its share of its range's decision)",
            ["pipeline", "router"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "coe_gateway_overhead_seconds",
            "Request wall time minus the time spent waiting on experts",
            ["path"],
            buckets=FAST_BUCKETS,
            registry=g,
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
        self.expert_ttft = Histogram(
            "coe_expert_ttft_seconds",
            "Streamed expert calls: from sending the request to the first generated token",
            ["expert"],
            buckets=LATENCY_BUCKETS,
            registry=g,
        )
        self.expert_rate = Histogram(
            "coe_expert_tokens_per_second",
            "Completion tokens per second of generation (a stream: first token to end)",
            ["expert"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "coe_rate_limited", "Requests refused by a key's rate limit", registry=g
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
        self.store_circuit_open = Gauge(
            "coe_store_circuit_open",
            "1 while the store's circuit breaker refuses calls (Redis down or hung)",
            registry=r,
        )
        self.registry_version = Gauge(
            "coe_registry_version", "Expert registry version seen by this replica", registry=r
        )

    def attach_pools(self, pool_metrics: PoolMetrics) -> None:
        """Pools keep their own figures; export them at scrape time."""
        from coe.observability.pool_collector import PoolCollector

        self.registry.register(PoolCollector(pool_metrics))

    def export_batch_jobs(self, jobs: JobSource) -> JobLines:
        """Export the lines of recent batch jobs (`coe_batch_job_lines`) from a snapshot;
        the caller runs the returned collector's `run` to keep it fresh."""
        from coe.observability.batch_lines import JobLines

        lines = JobLines(jobs)
        self.registry.register(lines)
        return lines

    def observe_route(self, router: str, experts: list[str]) -> None:
        for expert in experts:
            self.routed.labels(router, expert).inc()

    def observe_decision(self, pipeline: str | None, router: str, seconds: float) -> None:
        self.route_seconds.labels(pipeline or DIRECT, router).observe(seconds)

    def observe_plan(self, plan: Plan) -> None:
        """A routed request (or batch line): its choices and the time its decision took."""
        decision = plan.decision
        self.observe_route(decision.router, decision.chosen)
        self.observe_decision(plan.target.pipeline, decision.router, plan.route_ms / 1000)

    def observe_overhead(self, path: str, seconds: float) -> None:
        self.overhead.labels(path).observe(max(seconds, 0.0))

    def observe_usage(self, expert: str, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            value = usage.get(kind)
            if isinstance(value, int) and value > 0:
                self.tokens.labels(expert, kind.removesuffix("_tokens")).inc(value)

    def observe_expert_call(self, call: ExpertCall) -> None:
        """`ExpertClient`'s observer: one replica attempt (a stream: at its end)."""
        self.expert_latency.labels(call.expert, "ok" if call.ok else "error").observe(call.seconds)
        if call.ttft_s is not None:
            self.expert_ttft.labels(call.expert).observe(call.ttft_s)
        rate = call.tokens_per_second
        if rate is not None:
            self.expert_rate.labels(call.expert).observe(rate)
        self.observe_usage(call.expert, call.usage)

    def observe_fallbacks(self, experts: list[str]) -> None:
        for expert in experts:
            self.fallbacks.labels(expert).inc()

    def serve(self, port: int, host: str = "127.0.0.1", token: str | None = None) -> WSGIServer:
        """Expose these metrics on their own port (processes without the gateway: workers),
        behind `token` when one is given, as the gateway's /metrics is."""
        return serve_registry(self.registry, port, host, token)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- who may scrape: the same rule for the gateway, the pool service and workers ----------
METRICS_AUTH_MESSAGE = "/metrics needs `Authorization: Bearer <COE_METRICS_TOKEN>`"


def checked_metrics_token(settings: Settings) -> str | None:
    """COE_METRICS_TOKEN, refused (as the admin token is) when a placeholder or short,
    outside dev mode; None when unset or empty (as compose passes an unset variable):
    /metrics is then open."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if not token:
        return None
    if is_weak(token) and not settings.dev_mode:
        raise ConfigError(
            "COE_METRICS_TOKEN is a placeholder or shorter than "
            f"{MIN_TOKEN_LENGTH} characters; {STRONG_HINT} "
            "or leave it unset to keep /metrics open"
        )
    return token


def may_scrape(authorization: str | None, token: str | None) -> bool:
    """Whether an `Authorization` header lets its caller read metrics (constant time)."""
    if token is None:
        return True
    return token_matches(bearer_token(authorization), token)


def check_scrape(authorization: str | None, token: str | None) -> None:
    if not may_scrape(authorization, token):
        raise Unauthorized(METRICS_AUTH_MESSAGE)


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def guarded(app: WsgiApp, token: str | None) -> WsgiApp:
    """A WSGI app that answers 401 (OpenAI's error shape) to callers without the token."""
    refusal = json.dumps(Unauthorized(METRICS_AUTH_MESSAGE).to_openai()).encode()

    def guard(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if may_scrape(environ.get("HTTP_AUTHORIZATION"), token):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "application/json"), ("WWW-Authenticate", "Bearer")],
        )
        return [refusal]

    return guard


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape never holds the process at exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the process's own log


def serve_registry(
    registry: CollectorRegistry, port: int, host: str, token: str | None
) -> WSGIServer:
    """Serve `registry` on a daemon thread; `server.shutdown()` stops it."""
    server = make_server(
        host, port, guarded(make_wsgi_app(registry), token), _Server, handler_class=_Quiet
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
