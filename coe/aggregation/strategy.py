"""The aggregation-strategy plug-in: how the answers of k experts become one.

A strategy is a class with a `name` (what `pipelines.<p>.aggregation.strategy` says) and one
method; the built-ins (synthesize, vote, first, best) are plug-ins like a third party's
(`coe.plugin_families.AGGREGATIONS`, entry-point group `coe.aggregations`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from coe.errors import ConfigError
from coe.plugin_families import AGGREGATIONS
from coe.plugins import Plugins

if TYPE_CHECKING:
    from coe.aggregation.combine import Aggregation
    from coe.aggregation.fanout import ExpertAnswer
    from coe.aggregation.outcome import FanOut
    from coe.dispatch import Answer
    from coe.experts.schema import CoeConfig


@dataclass
class Combining:
    """What a strategy combines: the experts that answered (`ok`, best score first), the
    fan-out's record (`out`, finished by `final` or `out.finish`), the request and the
    aggregation it runs in (`agg`: the client, the experts, the spec)."""

    agg: Aggregation
    out: FanOut
    ok: list[ExpertAnswer]
    body: dict[str, Any]
    question: str
    stream: bool

    def final(self, answer: ExpertAnswer) -> Answer:
        """Return one expert's finished answer as the reply."""
        return self.agg.final(self.out, answer, self.stream)


class Strategy(ABC):
    """One way to combine answers. `until_first`: the fan-out may stop at the first answer."""

    name: ClassVar[str]
    until_first: ClassVar[bool] = False

    @abstractmethod
    async def combine(self, job: Combining) -> Answer:
        """One answer from `job.ok`."""


class StrategyRegistry(Plugins[Strategy]):
    def __init__(self) -> None:
        f = AGGREGATIONS
        super().__init__(Strategy, f.attr, group=f.group, what=f.what, label=f.label)

    @classmethod
    def builtins(cls) -> StrategyRegistry:
        """The built-in strategies only (no installed metadata read)."""
        registry = cls()
        registry.load_builtins(AGGREGATIONS)
        return registry

    @classmethod
    def load(cls) -> StrategyRegistry:
        """The built-in strategies and the installed `coe.aggregations` entry points."""
        registry = cls()
        registry.load_builtins(AGGREGATIONS)
        registry.load_entry_points()
        return registry

    def check(self, strategies: Iterable[tuple[str, str]]) -> None:
        """Every (pipeline, strategy name) resolves, else a ConfigError naming the setting."""
        for pipeline, name in strategies:
            try:
                self.get(name)
            except ConfigError as err:
                where = f"pipelines.{pipeline}.aggregation.strategy"
                raise ConfigError(f"{where}: {err.message}") from None

    def strategy(self, name: str) -> Strategy:
        return self.get(name)()


def pipeline_strategies(config: CoeConfig) -> list[tuple[str, str]]:
    """(pipeline, strategy name) for every pipeline the config declares."""
    return [(name, spec.aggregation.strategy) for name, spec in config.pipelines.items()]
