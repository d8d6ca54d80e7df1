"""Export the pools' swap and queue figures to Prometheus, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from coe.pool.metrics import SHOWN_STATES, Histogram, PoolMetrics


class PoolCollector(Collector):
    def __init__(self, metrics: PoolMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        labels = ["pool", "expert"]
        loads = CounterMetricFamily("coe_pool_loads", "Experts made resident", labels=labels)
        unloads = CounterMetricFamily("coe_pool_unloads", "Experts swapped out", labels=labels)
        failures = CounterMetricFamily(
            "coe_pool_failures", "Swap controller failures", labels=labels
        )
        depth = GaugeMetricFamily("coe_pool_queue_depth", "Requests waiting", labels=labels)
        for (pool, expert), n in list(m.loads.items()):
            loads.add_metric([pool, expert], n)
        for (pool, expert), n in list(m.unloads.items()):
            unloads.add_metric([pool, expert], n)
        for (pool, expert), n in list(m.failures.items()):
            failures.add_metric([pool, expert], n)
        for (pool, expert), n in list(m.queue_depth.items()):
            depth.add_metric([pool, expert], n)
        swaps = CounterMetricFamily("coe_pool_swaps", "Swaps started", labels=["pool"])
        for pool, n in list(m.swaps.items()):
            swaps.add_metric([pool], n)
        resident = GaugeMetricFamily(
            "coe_pool_resident",
            "1 for the expert's state (resident, asleep, loading, unloaded), 0 for the others",
            labels=["pool", "expert", "state"],
        )
        for (pool, expert), now in list(m.states.items()):
            for state in SHOWN_STATES:
                resident.add_metric([pool, expert, state], 1.0 if state == now else 0.0)
        yield from (loads, unloads, failures, depth, swaps, resident)
        yield _histogram("coe_pool_swap_seconds", "Seconds per swap", m.swap_seconds)
        yield _histogram("coe_pool_wait_seconds", "Seconds waiting for a swap", m.wait_seconds)
        yield _histogram(
            "coe_pool_wake_seconds",
            "Seconds for a load or wake to make an expert resident, as its controller took",
            m.wake_seconds,
        )


def _histogram(
    name: str, doc: str, table: dict[tuple[str, str], Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["pool", "expert"])
    for (pool, expert), hist in list(table.items()):
        cumulative = list(accumulate(hist.counts))
        buckets = [(str(b), float(c)) for b, c in zip(hist.buckets, cumulative, strict=False)]
        buckets.append(("+Inf", float(cumulative[-1])))
        family.add_metric([pool, expert], buckets, sum_value=hist.total)
    return family
