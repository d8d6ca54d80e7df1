"""A request's own routing policy (`extra_body={"coe": {...}}`): which experts it may use
(allow, deny, a cost ceiling), how many to consult (k), through which pipeline, and the
conversation the request belongs to (`conversation`, which constrains nothing: routers read
it as `RouteContext.caller.conversation`).

The policy narrows the experts routers may choose from (`RouteContext.experts`), so every
router honours it without knowing of it; the engine then applies k and records the policy
on the decision (`details["policy"]`), which every answer and explanation echoes. The
`coe` key itself never reaches an expert (`expert_body`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coe.errors import ExpertUnavailable, InvalidRequest, NoExpertWithinPolicy
from coe.experts.schema import ExpertSpec
from coe.routing.decision import RouteDecision

POLICY_KEY = "coe"
MAX_K = 16  # the most a pipeline may ask for (PipelineSpec.k)
MAX_NAMES = 256
CONVERSATION_MAX = 128
CONVERSATION_PATTERN = r"^[A-Za-z0-9._:-]+$"  # what a key in a store or a log line holds as is


class RoutingPolicy(BaseModel):
    """What one request asks of routing. Strict: unknown keys and loose types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    k: int | None = Field(
        None, ge=1, le=MAX_K, description="experts to consult; overrides the pipeline's k"
    )
    max_cost: float | None = Field(
        None, ge=0, description="experts whose registry cost exceeds this are not chosen"
    )
    allow: list[str] | None = Field(
        None, min_length=1, max_length=MAX_NAMES, description="only these experts may answer"
    )
    deny: list[str] = Field(
        default_factory=list, max_length=MAX_NAMES, description="never these (deny wins)"
    )
    pipeline: str | None = Field(
        None, min_length=1, max_length=256, description="route with this pipeline instead"
    )
    conversation: str | None = Field(
        None,
        min_length=1,
        max_length=CONVERSATION_MAX,
        pattern=CONVERSATION_PATTERN,
        description="the conversation this request belongs to: 1-128 of A-Z a-z 0-9 . _ : -",
    )

    def key(self) -> str:
        """Equal for policies that route alike (requests are grouped by it in batches): the
        conversation is the caller's, not a constraint, so it is left out."""
        return self.model_dump_json(exclude={"conversation"})

    def echo(self) -> dict[str, Any]:
        """The policy's constraints as the client set them (the conversation is not one)."""
        return self.model_dump(exclude_unset=True, exclude_none=True, exclude={"conversation"})


def policy_of(body: Mapping[str, Any]) -> RoutingPolicy | None:
    """The policy a request body carries under `coe`, or None; a bad one is a 400 whose
    `param` points into it (e.g. `coe.k`)."""
    raw = body.get(POLICY_KEY)
    if raw is None:
        return None
    if isinstance(raw, RoutingPolicy):
        return raw
    try:
        return RoutingPolicy.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors()[:3]:
            where = ".".join([POLICY_KEY, *(str(p) for p in e.get("loc", ()))])
            problems.append((where, e.get("msg", "invalid")))
        message = "; ".join(f"{where}: {msg}" for where, msg in problems)
        raise InvalidRequest(f"Invalid request: {message}", param=problems[0][0]) from None


def expert_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body an expert receives: everything but the routing policy."""
    if POLICY_KEY not in body:
        return body
    return {key: value for key, value in body.items() if key != POLICY_KEY}


def pipeline_named(
    policy: RoutingPolicy, pipelines: Iterable[str], expert: str | None = None
) -> str | None:
    """The pipeline the policy routes with (`name` or `coe/name`), None if it names none.
    `expert`: the expert the request's model names, which no pipeline can replace."""
    if policy.pipeline is None:
        return None
    if expert is not None:
        raise InvalidRequest(
            f"coe.pipeline cannot apply: the request names expert {expert!r}, not a "
            f"pipeline (use model coe/auto or coe/<pipeline>)",
            param="coe.pipeline",
        )
    known = sorted(pipelines)
    name = policy.pipeline.removeprefix("coe/")
    if name not in known:
        raise InvalidRequest(
            f"coe.pipeline {policy.pipeline!r} does not exist; the pipelines are: "
            f"{', '.join(known)}",
            param="coe.pipeline",
            code="unknown_pipeline",
        )
    return name


@dataclass(frozen=True)
class Scope:
    """A policy applied to the registry: the experts routing may use, and why the others
    may not."""

    policy: RoutingPolicy
    experts: Mapping[str, ExpertSpec]  # registered, available now and within the policy
    excluded: Mapping[str, str]  # expert -> why the policy keeps it out

    @classmethod
    def of(
        cls,
        policy: RoutingPolicy,
        registered: Mapping[str, ExpertSpec],
        available: Mapping[str, ExpertSpec],
    ) -> Scope:
        """Check the policy against the registry; every way it cannot be met is an error."""
        for param, names in (("coe.allow", policy.allow or ()), ("coe.deny", policy.deny)):
            if unknown := sorted({n for n in names if n not in registered}):
                raise InvalidRequest(
                    f"{param} names experts that do not exist: {', '.join(unknown)} "
                    f"(GET /v1/models lists them)",
                    param=param,
                    code="unknown_expert",
                )
        excluded = {
            name: why for name, spec in registered.items() if (why := _kept_out(policy, spec))
        }
        within = [name for name in registered if name not in excluded]
        if not within:
            raise NoExpertWithinPolicy(
                f"No expert is within the request's policy ({_list(excluded)})",
                param=_culprit(policy),
            )
        if policy.k is not None and policy.k > len(within):
            raise InvalidRequest(
                f"coe.k is {policy.k}, but only {len(within)} expert(s) are within the "
                f"policy: {', '.join(within)}",
                param="coe.k",
                code="k_exceeds_experts",
            )
        usable = {name: spec for name, spec in available.items() if name not in excluded}
        if not usable:
            raise ExpertUnavailable(
                f"No expert within the request's policy can answer now "
                f"({', '.join(within)}: unavailable)"
            )
        return cls(policy=policy, experts=usable, excluded=excluded)

    def direct(self, decision: RouteDecision) -> RouteDecision:
        """A request that names its expert: the policy may refuse it, never change it."""
        expert = decision.chosen[0]
        if self.policy.k is not None and self.policy.k > 1:
            raise InvalidRequest(
                f"coe.k is {self.policy.k}, but the request names one expert ({expert!r})",
                param="coe.k",
            )
        if expert in self.excluded:
            raise NoExpertWithinPolicy(
                f"The request names expert {expert!r}, which its policy keeps out "
                f"({self.excluded[expert]})",
                param=_culprit(self.policy),
            )
        return self.stamp(decision)

    def with_k(self, decision: RouteDecision) -> RouteDecision | None:
        """The policy's k on a router's decision, or None when the policy sets no k.

        Capped at the candidates the router ranked (within the policy); the reason says so."""
        k = self.policy.k
        if k is None:
            return None
        if k <= len(decision.candidates):
            return decision.with_k(k, f"{decision.reason}; k={k} (request policy)")
        used = len(decision.candidates)
        return decision.with_k(
            used,
            f"{decision.reason}; k={used} (request policy asked {k}, the router ranked {used})",
        )

    def stamp(self, decision: RouteDecision) -> RouteDecision:
        """The decision, carrying the effective policy in `details["policy"]`."""
        echo: dict[str, Any] = {**self.policy.echo(), "excluded": dict(self.excluded)}
        return replace(decision, details={**decision.details, "policy": echo})

    def nothing_within(self, pipeline: str, tried: list[str]) -> NoExpertWithinPolicy:
        """Every router abstained or ranked only experts the policy keeps out."""
        return NoExpertWithinPolicy(
            f"pipeline {pipeline!r} found no expert within the request's policy "
            f"({_list(self.excluded)}; {'; '.join(tried)})",
            param=_culprit(self.policy),
        )


def _kept_out(policy: RoutingPolicy, spec: ExpertSpec) -> str | None:
    if spec.name in policy.deny:
        return "denied"
    if policy.allow is not None and spec.name not in policy.allow:
        return "not allowed"
    if policy.max_cost is not None and spec.cost > policy.max_cost:
        return f"cost {spec.cost:g} exceeds max_cost {policy.max_cost:g}"
    return None


def _culprit(policy: RoutingPolicy) -> str:
    """The `param` of a policy nobody meets: its one filter, or the whole policy."""
    filters = [
        name
        for name, on in (
            ("allow", policy.allow is not None),
            ("deny", bool(policy.deny)),
            ("max_cost", policy.max_cost is not None),
        )
        if on
    ]
    return f"{POLICY_KEY}.{filters[0]}" if len(filters) == 1 else POLICY_KEY


def _list(excluded: Mapping[str, str]) -> str:
    return ", ".join(f"{name}: {why}" for name, why in excluded.items()) or "none excluded"
