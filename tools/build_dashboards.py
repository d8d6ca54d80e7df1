"""Build coe's Grafana dashboards and write them as provisioned JSON.

    python -m tools.build_dashboards            # (re)write services/grafana/dashboards/
    python -m tools.build_dashboards --check    # exit 1 when the committed JSON is stale

The dashboards are plain dicts built here; the JSON under services/grafana/dashboards/ is
generated from them and never edited by hand. Every panel reads the `${datasource}`
variable (any Prometheus that scrapes coe), so the files work in any Grafana.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tools.grafana_model import (
    Json,
    Panel,
    Row,
    dashboard,
    increase,
    label_variable,
    quantile,
    quantile_targets,
    rate,
    targets,
)

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "services" / "grafana" / "dashboards"
# coe_batch_job_lines names its batch in a `batch` label (`job` is Prometheus' scrape job).
JOB = "batch"


# -- the dashboards -----------------------------------------------------------------------
def overview() -> Json:
    chat = 'path=~"/v1/.*"'
    traffic = Row(
        "Traffic and errors",
        [
            Panel(
                "Requests by status",
                "HTTP requests served per second, by status code (coe_requests_total).",
                targets((rate("coe_requests_total", by="status"), "{{status}}")),
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Error ratio (5xx)",
                "Share of requests answered with a 5xx status.",
                targets(
                    (
                        rate("coe_requests_total", 'status=~"5.."')
                        + " / "
                        + rate("coe_requests_total"),
                        "5xx ratio",
                    )
                ),
                unit="percentunit",
            ),
            Panel(
                "Client errors (4xx) and server errors (5xx) by path",
                "Requests per second answered with an error, by path and status.",
                targets(
                    (
                        rate("coe_requests_total", 'status=~"[45].."', by="path, status"),
                        "{{path}} {{status}}",
                    )
                ),
                unit="reqps",
            ),
            Panel(
                "Requests by path",
                "Requests per second, by route path.",
                targets((rate("coe_requests_total", by="path"), "{{path}}")),
                unit="reqps",
            ),
        ],
    )
    latency = Row(
        "Latency",
        [
            Panel(
                "Request latency (API)",
                "p50, p95 and p99 of the time to the last byte of /v1 requests.",
                quantile_targets("coe_request_latency_seconds", chat),
                unit="s",
            ),
            Panel(
                "Request latency p95 by path",
                "p95 of the time to the last byte, per route path.",
                targets(
                    (quantile(0.95, "coe_request_latency_seconds", by="path"), "{{path}}"),
                ),
                unit="s",
            ),
            Panel(
                "Gateway overhead",
                "Request time minus the time spent waiting on experts: what the gateway "
                "itself adds (routing, auth, aggregation, serialisation).",
                quantile_targets("coe_gateway_overhead_seconds"),
                unit="s",
            ),
            Panel(
                "Gateway overhead p95 by path",
                "p95 of the gateway's own time, per route path.",
                targets((quantile(0.95, "coe_gateway_overhead_seconds", by="path"), "{{path}}")),
                unit="s",
            ),
        ],
    )
    routing = Row(
        "Routing",
        [
            Panel(
                "Routing decision latency p95",
                "p95 of the time to choose experts, by pipeline and router.",
                targets(
                    (
                        quantile(0.95, "coe_route_decision_seconds", by="pipeline, router"),
                        "{{pipeline}} / {{router}}",
                    )
                ),
                unit="s",
            ),
            Panel(
                "Routing decision latency (all)",
                "p50, p95 and p99 of every routing decision.",
                quantile_targets("coe_route_decision_seconds"),
                unit="s",
            ),
            Panel(
                "Routing mix",
                "Experts chosen per second, by the router that chose them.",
                targets(
                    (
                        rate("coe_route_decisions_total", by="router, expert"),
                        "{{router}} → {{expert}}",
                    )
                ),
                unit="ops",
                stack=True,
            ),
            Panel(
                "Fallbacks",
                "Experts skipped after a failure (the next ranked one answered), per second.",
                targets((rate("coe_fallbacks_total", by="expert"), "{{expert}}")),
                unit="ops",
            ),
        ],
    )
    health = Row(
        "Load and health",
        [
            Panel(
                "In flight",
                "Chat and route requests being served now, all replicas.",
                targets(("sum(coe_requests_in_flight)", "in flight")),
                kind="stat",
                width=6,
                height=5,
            ),
            Panel(
                "Rate limited",
                "Requests refused by an API key's rate limit (429), per second.",
                targets((rate("coe_rate_limited_total"), "rate limited")),
                kind="stat",
                unit="reqps",
                width=6,
                height=5,
            ),
            Panel(
                "Store circuit open",
                "1 while a replica's Redis circuit breaker refuses calls (Redis down or hung).",
                targets(("max(coe_store_circuit_open)", "circuit open")),
                kind="stat",
                width=6,
                height=5,
            ),
            Panel(
                "Registry version",
                "Expert registry version per replica: replicas that disagree lag a change.",
                targets(("max by (instance) (coe_registry_version)", "{{instance}}")),
                kind="stat",
                width=6,
                height=5,
            ),
            Panel(
                "In flight by replica",
                "Requests being served, per gateway replica.",
                targets(("sum by (instance) (coe_requests_in_flight)", "{{instance}}")),
                width=24,
            ),
        ],
    )
    return dashboard(
        "coe-overview",
        "coe overview",
        "Gateway traffic, errors, latency, routing and health.",
        [traffic, latency, routing, health],
    )


def experts() -> Json:
    only = 'expert=~"$expert"'
    failed = f'{only}, outcome="error"'
    calls = Row(
        "Expert calls",
        [
            Panel(
                "Expert latency p95",
                "p95 of one replica attempt, to the whole answer (stream end), by expert.",
                targets(
                    (
                        quantile(0.95, "coe_expert_latency_seconds", only, by="expert"),
                        "{{expert}}",
                    )
                ),
                unit="s",
            ),
            Panel(
                "Expert latency p50",
                "Median of one replica attempt, by expert.",
                targets(
                    (
                        quantile(0.5, "coe_expert_latency_seconds", only, by="expert"),
                        "{{expert}}",
                    )
                ),
                unit="s",
            ),
            Panel(
                "Calls by outcome",
                "Expert calls per second, by expert and outcome (ok, error).",
                targets(
                    (
                        rate("coe_expert_latency_seconds_count", only, by="expert, outcome"),
                        "{{expert}} {{outcome}}",
                    )
                ),
                unit="ops",
                stack=True,
            ),
            Panel(
                "Error rate by expert",
                "Share of an expert's calls that failed.",
                targets(
                    (
                        rate("coe_expert_latency_seconds_count", failed, by="expert")
                        + " / "
                        + rate("coe_expert_latency_seconds_count", only, by="expert"),
                        "{{expert}}",
                    )
                ),
                unit="percentunit",
            ),
        ],
    )
    streaming = Row(
        "Streaming and tokens",
        [
            Panel(
                "Time to first token p95",
                "p95 of the wait for a streamed call's first token, by expert.",
                targets(
                    (quantile(0.95, "coe_expert_ttft_seconds", only, by="expert"), "{{expert}}")
                ),
                unit="s",
            ),
            Panel(
                "Time to first token p50",
                "Median wait for a streamed call's first token, by expert.",
                targets(
                    (quantile(0.5, "coe_expert_ttft_seconds", only, by="expert"), "{{expert}}")
                ),
                unit="s",
            ),
            Panel(
                "Decode speed p50",
                "Median completion tokens per second of a call, by expert.",
                targets(
                    (
                        quantile(0.5, "coe_expert_tokens_per_second", only, by="expert"),
                        "{{expert}}",
                    )
                ),
                unit="short",
            ),
            Panel(
                "Tokens",
                "Tokens used per second, by expert and kind (prompt, completion).",
                targets((rate("coe_tokens_total", only, by="expert, kind"), "{{expert}} {{kind}}")),
                unit="short",
                stack=True,
            ),
        ],
    )
    return dashboard(
        "coe-experts",
        "coe experts",
        "Per-expert latency, time to first token, decode speed, tokens and errors.",
        [calls, streaming],
        [label_variable("expert", "coe_expert_latency_seconds_count", "expert")],
    )


def pools() -> Json:
    only = 'pool=~"$pool"'
    residency = Row(
        "Residency and swaps",
        [
            Panel(
                "Resident experts",
                "1 while the expert is resident (loaded and awake) on its pool's device.",
                targets(
                    (
                        f'max by (pool, expert) (coe_pool_resident{{{only}, state="resident"}})',
                        "{{pool}} {{expert}}",
                    )
                ),
                stack=True,
            ),
            Panel(
                "Experts by state",
                "How many of each pool's experts are resident, asleep, loading or unloaded.",
                targets(
                    (
                        f"sum by (pool, state) (coe_pool_resident{{{only}}})",
                        "{{pool}} {{state}}",
                    )
                ),
            ),
            Panel(
                "Swaps",
                "Swaps per second, by pool.",
                targets((rate("coe_pool_swaps_total", only, by="pool"), "{{pool}}")),
                unit="ops",
            ),
            Panel(
                "Loads and unloads",
                "Experts made resident and swapped out per second, by pool and expert.",
                targets(
                    (
                        rate("coe_pool_loads_total", only, by="pool, expert"),
                        "load {{pool}} {{expert}}",
                    ),
                    (
                        rate("coe_pool_unloads_total", only, by="pool, expert"),
                        "unload {{pool}} {{expert}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Failures",
                "Swap controller failures in the window, by pool and expert.",
                targets(
                    (
                        increase("coe_pool_failures_total", only, by="pool, expert"),
                        "{{pool}} {{expert}}",
                    )
                ),
            ),
        ],
    )
    timing = Row(
        "Timing and queue",
        [
            Panel(
                "Swap seconds p95",
                "p95 of one swap (load or unload), by pool.",
                targets((quantile(0.95, "coe_pool_swap_seconds", only, by="pool"), "{{pool}}")),
                unit="s",
            ),
            Panel(
                "Wake seconds p95",
                "p95 of waking an expert (made resident again), by pool and expert.",
                targets(
                    (
                        quantile(0.95, "coe_pool_wake_seconds", only, by="pool, expert"),
                        "{{pool}} {{expert}}",
                    )
                ),
                unit="s",
            ),
            Panel(
                "Wait for a swap p95",
                "p95 of the time a request waited for its expert to become resident.",
                targets(
                    (
                        quantile(0.95, "coe_pool_wait_seconds", only, by="pool, expert"),
                        "{{pool}} {{expert}}",
                    )
                ),
                unit="s",
            ),
            Panel(
                "Queue depth",
                "Requests waiting for their expert, by pool and expert.",
                targets(
                    (
                        f"sum by (pool, expert) (coe_pool_queue_depth{{{only}}})",
                        "{{pool}} {{expert}}",
                    )
                ),
            ),
        ],
    )
    return dashboard(
        "coe-pools",
        "coe pools",
        "Pool services: which experts are resident, swaps and their cost, waiting requests.",
        [residency, timing],
        [label_variable("pool", "coe_pool_queue_depth", "pool")],
    )


def batch() -> Json:
    lines = Row(
        "Lines and jobs",
        [
            Panel(
                "Lines answered by status",
                "Batch lines answered per second by the workers, by status.",
                targets((rate("coe_batch_items_total", by="status"), "{{status}}")),
                unit="ops",
                stack=True,
            ),
            Panel(
                "Per-job progress",
                "Share of each recent job's lines answered (completed or failed).",
                targets(
                    (
                        f"sum by ({JOB}) (max by ({JOB}, status) "
                        f'(coe_batch_job_lines{{status=~"completed|failed"}})) / '
                        f'max by ({JOB}) (coe_batch_job_lines{{status="total"}})',
                        f"{{{{{JOB}}}}}",
                    )
                ),
                unit="percentunit",
            ),
            Panel(
                "Per-job lines by status",
                "Each recent job's lines: total, completed, failed (gateways and workers "
                "export the same figures: the maximum is shown).",
                targets(
                    (
                        f"max by ({JOB}, status) (coe_batch_job_lines)",
                        f"{{{{{JOB}}}}} {{{{status}}}}",
                    )
                ),
            ),
            Panel(
                "Queue depth",
                "Units on the batch stream: waiting for a worker, or pending (being worked).",
                targets(("max by (state) (coe_batch_queue_depth)", "{{state}}")),
            ),
            Panel(
                "Expert groups per job",
                "Expert groups a job needs when its run units are queued (model loads when its "
                "experts share a device): p50 and p95.",
                targets(
                    (quantile(0.5, "coe_batch_expert_groups"), "p50"),
                    (quantile(0.95, "coe_batch_expert_groups"), "p95"),
                ),
            ),
        ],
    )
    units = Row(
        "Work units",
        [
            Panel(
                "Unit seconds p95 by phase",
                "p95 of processing one work unit, by phase (route, run, aggregate).",
                targets(
                    (quantile(0.95, "coe_batch_unit_seconds", by="phase"), "{{phase}} p95"),
                    (quantile(0.5, "coe_batch_unit_seconds", by="phase"), "{{phase}} p50"),
                ),
                unit="s",
            ),
            Panel(
                "Units processed",
                "Work units finished per second, by phase.",
                targets((rate("coe_batch_unit_seconds_count", by="phase"), "{{phase}}")),
                unit="ops",
            ),
            Panel(
                "Unit errors",
                "Units whose processing raised, in the window, by phase (each is retried).",
                targets((increase("coe_batch_unit_errors_total", by="phase"), "{{phase}}")),
            ),
            Panel(
                "Units given up and jobs requeued",
                "Units given up after too many deliveries (their lines fail), and jobs the "
                "sweeper found with no work queued and queued again.",
                targets(
                    (increase("coe_batch_units_given_up_total", by="phase"), "given up {{phase}}"),
                    (increase("coe_batch_sweeper_requeued_total"), "requeued by the sweeper"),
                ),
            ),
        ],
    )
    return dashboard(
        "coe-batch",
        "coe batch",
        "Batch jobs: lines by status, per-job progress, work units, the queue and errors.",
        [lines, units],
    )


DASHBOARDS = {"overview": overview, "experts": experts, "pools": pools, "batch": batch}


def rendered() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {
        f"coe-{name}.json": json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """The files under `out_dir` that differ from what this module builds (or are missing)."""
    files = rendered()
    present = {p.name for p in out_dir.glob("*.json")} if out_dir.is_dir() else set()
    changed = [
        name
        for name, text in files.items()
        if name not in present or (out_dir / name).read_text() != text
    ]
    return sorted(changed + [name for name in present if name not in files])


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered().items():
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where to write the JSON")
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 if any file is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        changed = stale(args.out)
        for name in changed:
            print(f"stale: {args.out / name} (run python -m tools.build_dashboards)")
        return 1 if changed else 0
    for path in write(args.out):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
