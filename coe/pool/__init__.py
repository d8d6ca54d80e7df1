"""Expert pools: which experts are resident on a shared device, swaps, and grouping work by expert.

See docs/pools.md.
"""

from coe.pool.config import PoolSpec
from coe.pool.controllers import CONTROLLERS, ExpertState, SwapController
from coe.pool.metrics import PoolMetrics
from coe.pool.offline import OfflineSchedule, run_in_order
from coe.pool.pool import Pool
from coe.pool.pools import PoolSet, build_pools

__all__ = [
    "CONTROLLERS",
    "ExpertState",
    "OfflineSchedule",
    "Pool",
    "PoolMetrics",
    "PoolSet",
    "PoolSpec",
    "SwapController",
    "build_pools",
    "run_in_order",
]
