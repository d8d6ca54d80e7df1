"""Expert pools: which experts are resident on a shared device, and swaps.

What a swap controller plug-in is written against is exported here: `SwapController`,
`ControllerParams`, `PoolContext`, `ExpertState`. The pool service that runs a device's
pools (`coe pool serve`) is the front `coe.pool_service` (a web app, not part of this package).
See docs/pools.md.
"""

from coe.pool.controllers.base import ControllerParams, ExpertState, PoolContext, SwapController
from coe.pool.metrics import PoolMetrics
from coe.pool.pool import Pool
from coe.pool.pools import PoolSet, build_pools
from coe.pool.registry import ControllerRegistry

__all__ = [
    "ControllerParams",
    "ControllerRegistry",
    "ExpertState",
    "Pool",
    "PoolContext",
    "PoolMetrics",
    "PoolSet",
    "SwapController",
    "build_pools",
]
