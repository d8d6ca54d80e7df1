"""What a routing strategy is written against, in one import: the contract, its inputs, its answer.

    from coe.routing import Router, RouterParams, RouteContext, RouteDecision, ranked_from_scores

Light on purpose (no I/O, no torch): encoders (`coe.routing.encoders`) and the labelled-data
readers (`coe.routing.data`) stay in their own modules, imported by the routers that need them.
"""

from coe.errors import ConfigError
from coe.routing.base import ChatCaller, RouteContext, Router, RouterDeps
from coe.routing.base import NoParams as RouterParams
from coe.routing.decision import Candidate, RouteDecision, ranked_from_scores
from coe.routing.dynamic_k import dynamic_k

__all__ = [
    "Candidate",
    "ChatCaller",
    "ConfigError",
    "RouteContext",
    "RouteDecision",
    "Router",
    "RouterDeps",
    "RouterParams",
    "dynamic_k",
    "ranked_from_scores",
]
