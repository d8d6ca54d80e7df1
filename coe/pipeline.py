"""Route → dispatch → aggregate, with no web imports: the gateway and batch jobs share it."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coe.aggregation import Aggregation
from coe.dispatch import ExpertClient, Failure, complete_ranked, stream_ranked
from coe.errors import InvalidRequest, ModelNotFound, RoutingError
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import AggregationSpec, CoeConfig, ExpertSpec, PipelineSpec
from coe.routing.base import RouteContext, Router, RouterDeps
from coe.routing.decision import Candidate, RouteDecision
from coe.routing.dynamic_k import dynamic_k
from coe.routing.registry import RouterRegistry
from coe.store.base import Store

log = logging.getLogger(__name__)

MODEL_PREFIX = "coe/"
AUTO = "coe/auto"
DEFAULT_PIPELINE = PipelineSpec(routers=["default"])


@dataclass(frozen=True)
class Target:
    """What a request's `model` names: a pipeline to route through, or one expert."""

    pipeline: str | None = None
    expert: str | None = None


@dataclass(frozen=True)
class Plan:
    """A routed request: what it targets, the decision, and how k > 1 answers are combined."""

    target: Target
    decision: RouteDecision
    aggregation: AggregationSpec
    route_ms: float = 0.0

    @property
    def fans_out(self) -> bool:
        return self.decision.k > 1


@dataclass
class Completion:
    """`expert` wrote the text; with k > 1, `aggregation` is the fan-out's part of `coe`."""

    response: dict[str, Any]
    decision: RouteDecision
    expert: str
    failures: list[Failure] = field(default_factory=list)
    route_ms: float = 0.0
    experts: list[str] = field(default_factory=list)  # every expert that answered
    aggregator: str | None = None
    aggregation: dict[str, Any] | None = None


@dataclass
class StreamStart:
    first: dict[str, Any]
    rest: AsyncIterator[dict[str, Any]]
    decision: RouteDecision
    expert: str
    failures: list[Failure] = field(default_factory=list)
    route_ms: float = 0.0
    experts: list[str] = field(default_factory=list)
    aggregator: str | None = None
    aggregation: dict[str, Any] | None = None


def query_text(messages: list[dict[str, Any]]) -> str:
    """The text routers look at: the last user message (text parts joined)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    str(p.get("text", ""))
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
    raise InvalidRequest("messages must contain at least one user message", param="messages")


class Engine:
    """Holds the routers and pipelines; one per process, built by `build_engine`."""

    def __init__(
        self,
        config: CoeConfig,
        registry: ExpertRegistry,
        client: ExpertClient,
        routers: Mapping[str, Router],
    ):
        self.config = config
        self.registry = registry
        self.client = client
        self.routers = dict(routers)
        self.pipelines: dict[str, PipelineSpec] = dict(config.pipelines) or {
            config.default_pipeline: DEFAULT_PIPELINE
        }

    # -- naming ---------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        ids = [AUTO] + [MODEL_PREFIX + name for name in self.pipelines]
        return [*dict.fromkeys(ids), *self.registry.snapshot()]

    def resolve(self, model: str) -> Target:
        if model == AUTO:
            return Target(pipeline=self.config.default_pipeline)
        if model.startswith(MODEL_PREFIX) and model[len(MODEL_PREFIX) :] in self.pipelines:
            return Target(pipeline=model[len(MODEL_PREFIX) :])
        if model in self.registry.snapshot():
            return Target(expert=model)
        raise ModelNotFound(
            f"The model {model!r} does not exist. Use {AUTO}, coe/<pipeline> or an expert name "
            f"(GET /v1/models lists them).",
            param="model",
        )

    def context(self, request_id: str | None = None) -> RouteContext:
        """What routers may choose from: registered experts, minus those a pool cannot load."""
        experts = self.registry.snapshot()
        if down := self.client.unavailable():
            experts = {name: spec for name, spec in experts.items() if name not in down}
        return RouteContext(
            experts=experts,
            default_expert=self.config.default_expert,
            categories=self.config.categories,
            request_id=request_id,
        )

    # -- routing --------------------------------------------------------------------------
    async def decide(
        self, target: Target, query: str, request_id: str | None = None
    ) -> RouteDecision:
        ctx = self.context(request_id)
        if target.expert is not None:
            return RouteDecision(
                candidates=(Candidate(target.expert, 1.0),),
                router="direct",
                reason=f"the request named expert {target.expert}",
            )
        assert target.pipeline is not None
        spec = self.pipelines[target.pipeline]
        tried: list[str] = []
        for router_name in spec.routers:
            router = self.routers[router_name]
            decision = await router.route(query, ctx)
            if decision.abstained:
                tried.append(f"{router_name}: {decision.reason}")
                continue
            live = self._live_only(decision, ctx.experts)
            if live is None:
                tried.append(f"{router_name}: none of its candidates is registered")
                continue
            decision = live
            if tried:
                decision = _with_note(decision, "fell back after " + "; ".join(tried))
            if spec.dynamic_k is not None:
                return dynamic_k(decision, spec.dynamic_k.tau, spec.dynamic_k.max_k)
            # A pipeline's explicit k wins; otherwise a router may recruit several experts.
            k = spec.k if "k" in spec.model_fields_set else decision.k
            return decision.with_k(min(k, len(decision.candidates)))
        raise RoutingError(
            f"pipeline {target.pipeline!r}: every router abstained ({'; '.join(tried)})"
        )

    @staticmethod
    def _live_only(
        decision: RouteDecision, experts: Mapping[str, ExpertSpec]
    ) -> RouteDecision | None:
        live = tuple(c for c in decision.candidates if c.expert in experts)
        if not live:
            return None
        if len(live) == len(decision.candidates):
            return decision
        return RouteDecision(
            candidates=live,
            router=decision.router,
            reason=decision.reason,
            k=min(decision.k, len(live)),
            category=decision.category,
            details=decision.details,
        )

    # -- generation -----------------------------------------------------------------------
    async def plan(self, body: dict[str, Any], request_id: str | None = None) -> Plan:
        """Resolve the model and route the query; k > 1 means a fan-out."""
        target = self.resolve(str(body.get("model", "")))
        started = time.perf_counter()
        decision = await self.decide(target, query_text(body["messages"]), request_id)
        route_ms = (time.perf_counter() - started) * 1000
        spec = (
            self.pipelines[target.pipeline].aggregation
            if target.pipeline is not None
            else AggregationSpec()
        )
        return Plan(target=target, decision=decision, aggregation=spec, route_ms=route_ms)

    async def complete(
        self, body: dict[str, Any], request_id: str | None = None, plan: Plan | None = None
    ) -> Completion:
        plan = plan or await self.plan(body, request_id)
        decision = plan.decision
        if plan.fans_out:
            out = await self._aggregation(plan).run(
                body, query_text(body["messages"]), stream=False
            )
            assert out.response is not None
            response = {**out.response, "usage": out.usage()}
            return Completion(
                response=response,
                decision=decision,
                expert=out.expert,
                failures=out.failures,
                route_ms=plan.route_ms,
                experts=out.answered,
                aggregator=out.aggregator,
                aggregation=out.meta(),
            )
        answer = await complete_ranked(self.client, decision.ranked, self.registry.snapshot(), body)
        return Completion(
            response=answer.response,
            decision=decision,
            expert=answer.expert,
            failures=answer.failures,
            route_ms=plan.route_ms,
            experts=[answer.expert],
        )

    async def open_stream(
        self, body: dict[str, Any], request_id: str | None = None, plan: Plan | None = None
    ) -> StreamStart:
        plan = plan or await self.plan(body, request_id)
        decision = plan.decision
        if plan.fans_out:
            out = await self._aggregation(plan).run(body, query_text(body["messages"]), stream=True)
            assert out.first is not None and out.rest is not None
            return StreamStart(
                first=out.first,
                rest=out.rest,
                decision=decision,
                expert=out.expert,
                failures=out.failures,
                route_ms=plan.route_ms,
                experts=out.answered,
                aggregator=out.aggregator,
                aggregation=out.meta(),
            )
        opened = await stream_ranked(self.client, decision.ranked, self.registry.snapshot(), body)
        return StreamStart(
            first=opened.first,
            rest=opened.rest,
            decision=decision,
            expert=opened.expert,
            failures=opened.failures,
            route_ms=plan.route_ms,
            experts=[opened.expert],
        )

    def _aggregation(self, plan: Plan) -> Aggregation:
        return Aggregation(self.client, self.registry.snapshot(), plan.decision, plan.aggregation)

    async def chat_text(self, expert: str, messages: list[dict[str, Any]], **params: Any) -> str:
        """A ChatCaller for routers (keywords, instructions): one expert, plain text back."""
        spec = self.registry.get(expert)
        response = await self.client.complete(spec, {"messages": messages, **params})
        content = response["choices"][0]["message"].get("content")
        return str(content or "")


def _with_note(decision: RouteDecision, note: str) -> RouteDecision:
    return RouteDecision(
        candidates=decision.candidates,
        router=decision.router,
        reason=f"{decision.reason} ({note})",
        k=decision.k,
        category=decision.category,
        details=decision.details,
    )


async def build_engine(
    config: CoeConfig,
    registry: ExpertRegistry,
    client: ExpertClient,
    store: Store,
    base_dir: Path,
    encoders: Any = None,
) -> Engine:
    """Load router plug-ins, build every configured router once, and set them up."""
    plugins = RouterRegistry()
    for folder in config.routers_dirs:
        path = Path(folder)
        plugins.load_dir(path if path.is_absolute() else base_dir / path)
    plugins.load_entry_points()
    engine = Engine(config, registry, client, {})
    deps = RouterDeps(
        config=config, store=store, base_dir=base_dir, chat=engine.chat_text, encoders=encoders
    )
    specs = {name: (spec.type, spec.params) for name, spec in config.routers.items()}
    # `default` may be named in a pipeline without being declared: it needs no params.
    specs.setdefault("default", ("default", {}))
    for name, (type_name, params) in specs.items():
        router = plugins.build(name, type_name, params, deps)
        await router.setup()
        engine.routers[name] = router
    return engine
