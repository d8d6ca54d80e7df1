"""What a pool service publishes about its pools: the JSON gateways read, and Prometheus gauges.

Gateways route around an expert whose state is `unavailable`; `retry_in_s` says when its
pool tries it again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coe.pool.controllers.base import ExpertState
from coe.pool.pools import PoolSet


def pool_state(pools: PoolSet, models: Mapping[str, str]) -> dict[str, Any]:
    """`{"pools": {pool: {controller, capacity, occupied, experts: {expert: {...}}}}}`;
    `models` maps each expert to the model id its requests name."""
    out: dict[str, Any] = {}
    for name, pool in pools.pools.items():
        experts: dict[str, Any] = {}
        for expert in pool.experts:
            retry = pool.retry_in(expert)
            experts[expert] = {
                "model": models[expert],
                "state": pool.state(expert).value,
                "queue": pool.queue_depth(expert),
                "active": pool.active(expert),
                "retry_in_s": None if retry is None else round(retry, 3),
            }
        out[name] = {
            "controller": pool.controller.kind,
            "capacity": pool.capacity,
            "occupied": pool.occupied(),
            "experts": experts,
        }
    return {"pools": out}


class StateCollector(Collector):
    """Each expert's state (one series per state, 1 for the current one), calls in flight,
    and each pool's places taken, read at scrape time."""

    def __init__(self, pools: PoolSet):
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "coe_pool_expert_state",
            "1 for the state the expert is in, 0 for the others",
            labels=["pool", "expert", "state"],
        )
        active = GaugeMetricFamily(
            "coe_pool_active", "Calls admitted and not finished", labels=["pool", "expert"]
        )
        occupied = GaugeMetricFamily(
            "coe_pool_occupied", "Places taken, of the pool's capacity", labels=["pool"]
        )
        capacity = GaugeMetricFamily(
            "coe_pool_capacity", "Experts resident at once", labels=["pool"]
        )
        for name, pool in self.pools.pools.items():
            occupied.add_metric([name], pool.occupied())
            capacity.add_metric([name], pool.capacity)
            for expert in pool.experts:
                now = pool.state(expert)
                for each in ExpertState:
                    state.add_metric([name, expert, each.value], 1.0 if each is now else 0.0)
                active.add_metric([name, expert], pool.active(expert))
        yield from (state, active, occupied, capacity)
