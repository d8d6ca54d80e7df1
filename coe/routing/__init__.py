"""What a routing strategy is written against, in one import: the contract, its inputs, its answer.

    from coe.routing import Router, RouterParams, RouteContext, RouteDecision, ranked_from_scores

A context carries the request's `RequestNeeds`, its `Caller` and the pools' `PoolView`s; a
decision may carry per-expert `Estimate`s and the probability of its choice.

Light on purpose (no I/O, no torch): encoders (`coe.routing.encoders`) and the labelled-data
readers (`coe.routing.data`) stay in their own modules, imported by the routers that need them.
"""

from coe.errors import ConfigError
from coe.routing.base import ChatCaller, RouteContext, Router, RouterDeps
from coe.routing.base import NoParams as RouterParams
from coe.routing.context import Caller, PooledExpert, PoolView, QueryInfo
from coe.routing.decision import Candidate, Estimate, RouteDecision, ranked_from_scores
from coe.routing.dynamic_k import dynamic_k
from coe.routing.needs import RequestNeeds, needs_of

__all__ = [
    "Caller",
    "Candidate",
    "ChatCaller",
    "ConfigError",
    "Estimate",
    "PoolView",
    "PooledExpert",
    "QueryInfo",
    "RequestNeeds",
    "RouteContext",
    "RouteDecision",
    "Router",
    "RouterDeps",
    "RouterParams",
    "dynamic_k",
    "needs_of",
    "ranked_from_scores",
]
