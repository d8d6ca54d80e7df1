"""How a pipeline turns one router's decision into its final one: live experts only, within
the request's policy, the pipeline's (or policy's, or dynamic) k, a note of the routers that
abstained before it; and the decisions that stand in for a router (a named expert, a router
that failed on an outage, every router abstaining). `coe.pipeline.Engine` calls these."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from coe.errors import CoeError, RouterBusy, RoutingError
from coe.experts.schema import ExpertSpec, PipelineSpec
from coe.routing.decision import Candidate, RouteDecision
from coe.routing.dynamic_k import dynamic_k
from coe.routing.policy import Scope

log = logging.getLogger(__name__)


def direct(expert: str, scope: Scope | None = None) -> RouteDecision:
    decision = RouteDecision(
        candidates=(Candidate(expert, 1.0),),
        router="direct",
        reason=f"the request named expert {expert}",
    )
    return decision if scope is None else scope.direct(decision)


def router_failed(router_name: str, err: BaseException) -> RouteDecision:
    """A router that failed on an outage, as an abstention that says why."""
    why = err.message if isinstance(err, CoeError) else (str(err) or "timed out")
    # a saturated encoder is load, not an outage: one line per request would flood the log
    level = logging.DEBUG if isinstance(err, RouterBusy) else logging.WARNING
    log.log(level, "router %s failed, the pipeline moves on: %s", router_name, why)
    return RouteDecision.abstain(
        router_name, f"failed ({type(err).__name__}: {why})", error=type(err).__name__
    )


def settle(
    decision: RouteDecision,
    router_name: str,
    spec: PipelineSpec,
    experts: Mapping[str, ExpertSpec],
    tried: list[str],
    scope: Scope | None = None,
) -> RouteDecision | None:
    """A router's decision made final (live experts within the request's policy only, the
    policy's or else the pipeline's k), or None when it abstained or named no such expert;
    `tried` collects why, for the reason."""
    if decision.abstained:
        tried.append(f"{router_name}: {decision.reason}")
        return None
    live = _live_only(decision, experts)
    if live is None:
        where = "registered" if scope is None else "registered and within the request's policy"
        tried.append(f"{router_name}: none of its candidates is {where}")
        return None
    if tried:
        live = _with_note(live, "fell back after " + "; ".join(tried), tried)
    if scope is not None:
        return scope.stamp(scope.with_k(live) or _pipeline_k(live, spec))
    return _pipeline_k(live, spec)


def _pipeline_k(live: RouteDecision, spec: PipelineSpec) -> RouteDecision:
    if spec.dynamic_k is not None:
        return dynamic_k(live, spec.dynamic_k.tau, spec.dynamic_k.max_k)
    # A pipeline's explicit k wins; otherwise a router may recruit several experts.
    k = spec.k if "k" in spec.model_fields_set else live.k
    return live.with_k(min(k, len(live.candidates)))


def all_abstained(pipeline: str, tried: list[str], scope: Scope | None = None) -> CoeError:
    if scope is not None and scope.excluded:
        return scope.nothing_within(pipeline, tried)
    return RoutingError(f"pipeline {pipeline!r}: every router abstained ({'; '.join(tried)})")


def _live_only(decision: RouteDecision, experts: Mapping[str, ExpertSpec]) -> RouteDecision | None:
    """The decision over live experts only; the router's probability stays only while its
    choice does (it was given to the first candidate)."""
    live = tuple(c for c in decision.candidates if c.expert in experts)
    if not live:
        return None
    if len(live) == len(decision.candidates):
        return decision
    return replace(
        decision,
        candidates=live,
        k=min(decision.k, len(live)),
        estimates=tuple(e for e in decision.estimates if e.expert in experts),
        probability=decision.probability if live[0] == decision.candidates[0] else None,
    )


def _with_note(decision: RouteDecision, note: str, tried: list[str]) -> RouteDecision:
    return replace(
        decision,
        reason=f"{decision.reason} ({note})",
        details={**decision.details, "abstained": list(tried)},
    )
