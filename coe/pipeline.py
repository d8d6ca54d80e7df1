"""Route → dispatch → aggregate, with no web imports: `Engine` is the one way to answer, for
the chat endpoint, batch workers and the CLI alike."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from coe.aggregation import Aggregation, ExpertAnswer, StrategyRegistry, pipeline_strategies
from coe.dispatch import Answer, ExpertClient, complete_ranked, stream_ranked
from coe.dispatch.client import prepare_body
from coe.errors import (
    CoeError,
    ConfigError,
    ExpertUnavailable,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    RouterBusy,
    StoreUnavailable,
    UpstreamError,
)
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import AggregationSpec, CoeConfig, ExpertSpec, PipelineSpec
from coe.routing.base import RouteContext, Router, RouterDeps
from coe.routing.context import Caller, PoolStateSource, PoolViews, QueryInfo
from coe.routing.decision import RouteDecision
from coe.routing.needs import RequestNeeds, needs_of
from coe.routing.policy import RoutingPolicy, Scope, expert_body, pipeline_named, policy_of
from coe.routing.registry import RouterRegistry, router_specs
from coe.routing.settle import all_abstained, direct, router_failed, settle
from coe.routing.wrapping import setup_order
from coe.store.base import Store

log = logging.getLogger(__name__)

MODEL_PREFIX = "coe/"
AUTO = "coe/auto"
DEFAULT_PIPELINE = PipelineSpec(routers=["default"])
BATCH = "batch"  # offline work: pool services keep it grouped by expert
# What a router may fail with when the store or an LLM it calls fails, or its encoder is
# saturated: the pipeline moves on to its next router (the failure is the reason). Anything
# else is a bug and surfaces.
ROUTER_OUTAGES: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    UpstreamError,
    TimeoutError,
    RouterBusy,
)


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

    def to_dict(self) -> dict[str, Any]:
        """What a batch job stores between phases; `Engine.restore` reads it back."""
        return {
            "decision": self.decision.to_dict(),
            "pipeline": self.target.pipeline,
            "expert": self.target.expert,
            "route_ms": self.route_ms,
        }


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


def _caller(policy: RoutingPolicy | None, caller: Caller | None) -> Caller:
    """The caller, in the conversation the request's policy names (if it names one)."""
    caller = caller or Caller()
    if policy is None or policy.conversation is None:
        return caller
    return replace(caller, conversation=policy.conversation)


def expert_request(expert: ExpertSpec, body: dict[str, Any]) -> dict[str, Any]:
    """The whole request `expert` gets for `body` over HTTP (no `coe` policy; its model id,
    system prompt, defaults and token cap): what a batch engine generating in-process sends
    to a model."""
    return prepare_body(expert, expert_body(body), stream=False)


class Engine:
    """The one way to answer: route, dispatch, fan out and aggregate. One per process (and
    per config reload), built by `build_engine`; the chat endpoint, batch workers and any
    batch engine call these methods and nothing below them."""

    def __init__(
        self,
        config: CoeConfig,
        registry: ExpertRegistry,
        client: ExpertClient,
        routers: Mapping[str, Router],
        aggregations: StrategyRegistry | None = None,
        pools: PoolStateSource | None = None,
    ):
        """`pools`: where the pools' published state comes from; by default the client's
        liveness source when it publishes states (`coe.dispatch.liveness.PoolStates`)."""
        self.config = config
        self.aggregations = aggregations or StrategyRegistry.builtins()
        self.registry = registry
        self.client = client
        self.routers = dict(routers)
        if pools is None and isinstance(client.liveness, PoolStateSource):
            pools = client.liveness
        self.pool_views = PoolViews(pools)
        self.pipelines: dict[str, PipelineSpec] = dict(config.pipelines) or {
            config.default_pipeline: DEFAULT_PIPELINE
        }

    # -- naming ---------------------------------------------------------------------------
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

    def target(self, model: str, policy: RoutingPolicy | None = None) -> Target:
        """What `model` names, or the pipeline the request's policy routes with instead."""
        target = self.resolve(model)
        if policy is None or policy.pipeline is None:
            return target
        return Target(pipeline=pipeline_named(policy, self.pipelines, target.expert))

    def context(
        self,
        request_id: str | None = None,
        needs: RequestNeeds | None = None,
        caller: Caller | None = None,
        each: Sequence[QueryInfo] = (),
    ) -> RouteContext:
        """What routers may choose from: registered experts, minus those a pool cannot load;
        with the request's needs and caller (or, for a batch, each query's) and the pools'
        published state."""
        experts = self.registry.snapshot()
        if down := self.client.unavailable():
            experts = {name: spec for name, spec in experts.items() if name not in down}
        return RouteContext(
            experts=experts,
            default_expert=self.config.default_expert,
            categories=self.config.categories,
            request_id=request_id,
            needs=needs or RequestNeeds(),
            caller=caller or Caller(),
            pools=self.pool_views.current(),
            each=tuple(each),
        )

    # -- routing --------------------------------------------------------------------------
    def _scoped(
        self,
        request_id: str | None,
        policy: RoutingPolicy | None,
        needs: RequestNeeds | None = None,
        caller: Caller | None = None,
    ) -> tuple[RouteContext, Scope | None]:
        """The routing context, narrowed to the experts the request's policy allows."""
        ctx = self.context(request_id, needs, caller)
        if policy is None:
            return ctx, None
        scope = Scope.of(policy, self.registry.snapshot(), ctx.experts)
        return replace(ctx, experts=scope.experts), scope

    async def decide(
        self,
        target: Target,
        query: str,
        request_id: str | None = None,
        policy: RoutingPolicy | None = None,
        *,
        needs: RequestNeeds | None = None,
        caller: Caller | None = None,
    ) -> RouteDecision:
        """One query through the target's routers, in order, until one does not abstain."""
        ctx, scope = self._scoped(request_id, policy, needs, _caller(policy, caller))
        if target.expert is not None:
            return direct(target.expert, scope)
        assert target.pipeline is not None
        spec = self.pipelines[target.pipeline]
        tried: list[str] = []
        for router_name in spec.routers:
            try:
                decision = await self.routers[router_name].route(query, ctx)
            except ROUTER_OUTAGES as err:
                decision = router_failed(router_name, err)
            final = settle(decision, router_name, spec, ctx.experts, tried, scope)
            if final is not None:
                return final
        raise all_abstained(target.pipeline, tried, scope)

    async def decide_many(
        self,
        target: Target,
        queries: Sequence[str],
        policy: RoutingPolicy | None = None,
        *,
        each: Sequence[QueryInfo] = (),
    ) -> list[RouteDecision | CoeError]:
        """Many queries with one target (and policy) at once: each router sees every query
        still unrouted in one `route_batch` call (embeddings are encoded together). `each`:
        every query's own needs and caller, in order (`RouteContext.each`)."""
        ctx, scope = self._scoped(None, policy)
        infos = list(each) or [QueryInfo(caller=_caller(policy, None))] * len(queries)
        if len(infos) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(infos)} entries in each")
        if target.expert is not None:
            return [direct(target.expert, scope) for _ in queries]
        assert target.pipeline is not None
        spec = self.pipelines[target.pipeline]
        out: list[RouteDecision | CoeError | None] = [None] * len(queries)
        tried: list[list[str]] = [[] for _ in queries]
        pending = list(range(len(queries)))
        for router_name in spec.routers:
            if not pending:
                break
            try:
                decisions = await self.routers[router_name].route_batch(
                    [queries[i] for i in pending],
                    replace(ctx, each=[infos[i] for i in pending]),
                )
            except ROUTER_OUTAGES as err:
                decisions = [router_failed(router_name, err)] * len(pending)
            still = []
            for i, decision in zip(pending, decisions, strict=True):
                final = settle(decision, router_name, spec, ctx.experts, tried[i], scope)
                if final is None:
                    still.append(i)
                else:
                    out[i] = final
            pending = still
        for i in pending:
            out[i] = all_abstained(target.pipeline, tried[i], scope)
        return [o for o in out if o is not None]

    async def plan(
        self, body: dict[str, Any], request_id: str | None = None, caller: Caller | None = None
    ) -> Plan:
        """Resolve the model and route the query under the body's policy (`coe`, see
        coe.routing.policy), with the body's needs and the caller in the routing context;
        k > 1 means a fan-out."""
        policy = policy_of(body)
        target = self.target(str(body.get("model", "")), policy)
        started = time.perf_counter()
        query = query_text(body["messages"])
        decision = await self.decide(
            target, query, request_id, policy, needs=needs_of(body), caller=caller
        )
        return self._plan(target, decision, (time.perf_counter() - started) * 1000)

    async def plan_many(
        self, bodies: Sequence[dict[str, Any]], caller: Caller | None = None
    ) -> list[Plan | CoeError]:
        """Route a batch of requests, grouped by target so routers batch their work. A line
        that cannot be routed gets its error in its place; the others go on. `caller`: whom
        the lines come from (a batch job's owner key); each line's conversation is its own."""
        out: list[Plan | CoeError | None] = [None] * len(bodies)
        groups: dict[tuple[Target, str], list[tuple[int, str, QueryInfo]]] = {}
        policies: dict[str, RoutingPolicy | None] = {}
        for i, body in enumerate(bodies):
            try:
                policy = policy_of(body)
                target = self.target(str(body.get("model", "")), policy)
                key = policy.key() if policy is not None else ""
                policies.setdefault(key, policy)
                info = QueryInfo(needs_of(body), _caller(policy, caller))
                groups.setdefault((target, key), []).append((i, query_text(body["messages"]), info))
            except CoeError as err:
                out[i] = err
        for (target, key), members in groups.items():
            started = time.perf_counter()
            try:
                decisions = await self.decide_many(
                    target, [q for _, q, _ in members], policies[key], each=[m[2] for m in members]
                )
            except (InvalidRequest, ExpertUnavailable) as err:  # the policy cannot be met
                decisions = [err] * len(members)
            each_ms = (time.perf_counter() - started) * 1000 / len(members)
            for (i, _, _), decision in zip(members, decisions, strict=True):
                out[i] = (
                    decision
                    if isinstance(decision, CoeError)
                    else self._plan(target, decision, each_ms)
                )
        return [o for o in out if o is not None]

    def restore(self, stored: Mapping[str, Any]) -> Plan:
        """A plan stored by `Plan.to_dict` (in an earlier phase, maybe in another process)."""
        target = Target(pipeline=stored.get("pipeline"), expert=stored.get("expert"))
        decision = RouteDecision.from_dict(stored["decision"])
        return self._plan(target, decision, float(stored.get("route_ms") or 0.0))

    def _plan(self, target: Target, decision: RouteDecision, route_ms: float) -> Plan:
        pipeline = self.pipelines.get(target.pipeline or "")
        spec = pipeline.aggregation if pipeline is not None else AggregationSpec()
        return Plan(target=target, decision=decision, aggregation=spec, route_ms=route_ms)

    # -- answering ------------------------------------------------------------------------
    async def complete(self, plan: Plan, body: dict[str, Any]) -> Answer:
        """A whole answer: the ranked experts in turn, or the fan-out and its aggregation."""
        body = expert_body(body)
        if plan.fans_out:
            question = query_text(body["messages"])
            return await self._aggregation(plan).run(body, question, stream=False)
        experts = self.registry.snapshot()
        return await complete_ranked(self.client, plan.decision.ranked, experts, body)

    async def open_stream(self, plan: Plan, body: dict[str, Any]) -> Answer:
        """A streamed answer, opened: its first chunk is here, the rest follows."""
        body = expert_body(body)
        if plan.fans_out:
            question = query_text(body["messages"])
            return await self._aggregation(plan).run(body, question, stream=True)
        experts = self.registry.snapshot()
        return await stream_ranked(self.client, plan.decision.ranked, experts, body)

    async def answer_on(
        self, plan: Plan, expert: str, body: dict[str, Any], sender: str | None = None
    ) -> Answer:
        """A k = 1 batch answer that starts with `expert` (batch groups lines by expert),
        then falls back down the plan's ranked list like any other request. `sender` names
        the worker, so a pool service knows when it has moved on to another expert."""
        ranked = [expert, *(e for e in plan.decision.ranked if e != expert)]
        experts = self.registry.snapshot()
        return await complete_ranked(
            self.client, ranked, experts, expert_body(body), priority=BATCH, sender=sender
        )

    async def ask(
        self, expert: str, body: dict[str, Any], score: float = 1.0, sender: str | None = None
    ) -> ExpertAnswer:
        """One expert's part of a fan-out, run on its own (batch runs parts expert by
        expert); a failure is recorded in the part, not raised."""
        answer = ExpertAnswer(expert, score)
        started = time.perf_counter()
        try:
            spec = self.registry.get(expert)
            answer.response = await self.client.complete(spec, expert_body(body), BATCH, sender)
        except NotFound as err:  # the expert was removed since routing
            answer.status, answer.error = "failed", UpstreamError(err.message, expert=expert)
        except UpstreamError as err:
            answer.status, answer.error = "failed", err
        else:
            answer.status = "ok"
        answer.latency_ms = (time.perf_counter() - started) * 1000
        return answer

    async def combine(
        self, plan: Plan, answers: Sequence[ExpertAnswer], body: dict[str, Any]
    ) -> Answer:
        """The plan's aggregation over answers gathered earlier (one per chosen expert)."""
        question = query_text(body["messages"])
        combined = self._aggregation(plan).combine
        return await combined(list(answers), expert_body(body), question, stream=False)

    def _aggregation(self, plan: Plan) -> Aggregation:
        strategy = self.aggregations.strategy(plan.aggregation.strategy)
        return Aggregation(
            self.client, self.registry.snapshot(), plan.decision, plan.aggregation, strategy
        )

    async def chat_text(self, expert: str, messages: list[dict[str, Any]], **params: Any) -> str:
        """A ChatCaller for routers (keywords, instructions): one expert, plain text back."""
        spec = self.registry.get(expert)
        response = await self.client.complete(spec, {"messages": messages, **params})
        content = response["choices"][0]["message"].get("content")
        return str(content or "")


async def build_engine(
    config: CoeConfig,
    registry: ExpertRegistry,
    client: ExpertClient,
    store: Store,
    base_dir: Path,
    encoders: Any = None,
) -> Engine:
    """Load router plug-ins, build every configured router, check what each wraps, and set
    them up (a wrapped router before its wrappers): a complete engine or an error naming the
    router that failed (nothing half built is ever returned)."""
    plugins = RouterRegistry.load(config.routers_dirs, base_dir)
    aggregations = StrategyRegistry.load()
    aggregations.check(pipeline_strategies(config))
    engine = Engine(config, registry, client, {}, aggregations)
    deps = RouterDeps(
        config=config,
        store=store,
        base_dir=base_dir,
        chat=engine.chat_text,
        encoders=encoders,
        routers=MappingProxyType(engine.routers),  # filled below, read by wrapping routers
    )
    specs = router_specs(config)
    for name, (type_name, params) in specs.items():
        try:
            engine.routers[name] = plugins.build(name, type_name, params, deps)
        except Exception as err:  # re-raised, naming the router; the traceback is kept
            raise _not_built(name, type_name, err) from err
    for name in setup_order(engine.routers):
        try:
            await engine.routers[name].setup()
        except Exception as err:
            raise _not_built(name, specs[name][0], err) from err
    return engine


def _not_built(name: str, type_name: str, err: Exception) -> CoeError:
    what = f"router {name!r} ({type_name}) could not be built"
    if isinstance(err, StoreUnavailable):
        return StoreUnavailable(f"{what}: {err.message}")
    if isinstance(err, CoeError):
        return ConfigError(f"{what}: {err.message}")
    log.error("%s", what, exc_info=err)
    return ConfigError(f"{what}: {type(err).__name__}: {err}")
