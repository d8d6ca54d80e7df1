"""Pool figures reach Prometheus at scrape time."""

from __future__ import annotations

from coe.observability import Metrics
from coe.pool.metrics import PoolMetrics


def test_pool_metrics_exported() -> None:
    pool_metrics = PoolMetrics()
    metrics = Metrics()
    metrics.attach_pools(pool_metrics)
    pool_metrics.swapped_in("gpu0", "math", 2.5)
    pool_metrics.swapped_in("gpu0", "math", 0.5)
    pool_metrics.swapped_out("gpu0", "code", 1.0)
    pool_metrics.depth("gpu0", "code", 4)
    pool_metrics.waited("gpu0", "code", 0.2)
    text = metrics.render().decode()
    assert 'coe_pool_loads_total{expert="math",pool="gpu0"} 2.0' in text
    assert 'coe_pool_unloads_total{expert="code",pool="gpu0"} 1.0' in text
    assert 'coe_pool_queue_depth{expert="code",pool="gpu0"} 4.0' in text
    assert 'coe_pool_swap_seconds_sum{expert="math",pool="gpu0"} 3.0' in text
    assert 'coe_pool_swap_seconds_bucket{expert="math",le="1.0",pool="gpu0"} 1.0' in text
    assert 'coe_pool_swap_seconds_bucket{expert="math",le="+Inf",pool="gpu0"} 2.0' in text
    assert 'coe_pool_wait_seconds_count{expert="code",pool="gpu0"} 1.0' in text
