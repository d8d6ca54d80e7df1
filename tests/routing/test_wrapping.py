"""A router that wraps another of the same engine, named in config alone: a plug-in file in a
routers folder, resolved when the engine is built (errors then, not on the first query)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coe.dispatch import ExpertClient
from coe.errors import ConfigError
from coe.experts.registry import ExpertRegistry
from coe.experts.schema import CoeConfig
from coe.pipeline import Engine, Target, build_engine
from coe.store.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[2]

# Asks the router it wraps, then puts `prefer` first; records the order routers were set up.
WRAPPER = """
import itertools
from pydantic import BaseModel, ConfigDict
from coe.routing import RouteDecision, Router, ranked_from_scores

TICKS = itertools.count()

class PreferParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: str
    prefer: str

class Prefer(Router):
    type_name = "prefer"
    Params = PreferParams

    def wraps(self):
        return [self.params.inner]

    async def setup(self):
        self.set_up_at = next(TICKS)

    async def route(self, query, ctx):
        inner = await self.wrapped(self.params.inner).route(query, ctx)
        if inner.abstained:
            return inner
        ranked = [self.params.prefer] + [e for e in inner.ranked if e != self.params.prefer]
        return RouteDecision(
            candidates=ranked_from_scores({e: 1.0 / (i + 1) for i, e in enumerate(ranked)}),
            router=self.name,
            reason=f"{self.params.prefer} first, then {self.params.inner}: {inner.reason}",
            details={"inner": inner.to_dict()},
        )

class Rank(Router):
    type_name = "rank"

    async def setup(self):
        self.set_up_at = next(TICKS)

    async def route(self, query, ctx):
        scores = {"b": 0.6, "a": 0.3, "c": 0.1}
        return RouteDecision(ranked_from_scores(scores), self.name, "ranked")
"""


def config(routers: dict[str, Any], folder: Path) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {"name": n, "model": "m", "endpoints": ["http://127.0.0.1:9"]}
                for n in ("a", "b", "c")
            ],
            "default_expert": "a",
            "routers": routers,
            "pipelines": {"auto": {"routers": [next(iter(routers))]}},
            "routers_dirs": [str(REPO / "routers"), str(folder)],
        }
    )


async def build(routers: dict[str, Any], folder: Path) -> Engine:
    (folder / "prefer.py").write_text(WRAPPER)
    cfg = config(routers, folder)
    store = EmbeddedStore()
    registry = ExpertRegistry(store)
    await registry.seed(cfg)
    return await build_engine(cfg, registry, ExpertClient(None), store, folder)  # type: ignore[arg-type]


def set_up(engine: Engine) -> list[str]:
    """The routers, in the order they were set up."""
    timed = [n for n in engine.routers if hasattr(engine.routers[n], "set_up_at")]
    return sorted(timed, key=lambda n: engine.routers[n].set_up_at)  # type: ignore[attr-defined]


async def test_a_router_wraps_another_by_name_through_config(tmp_path: Path) -> None:
    engine = await build(
        {
            "outer": {"type": "prefer", "params": {"inner": "ranker", "prefer": "c"}},
            "ranker": {"type": "rank"},
        },
        tmp_path,
    )
    decision = await engine.decide(Target(pipeline="auto"), "anything")
    assert decision.router == "outer" and decision.ranked == ["c", "b", "a"]
    assert decision.details["inner"]["router"] == "ranker"
    assert set_up(engine) == ["ranker", "outer"]  # the wrapped one first, though listed later


async def test_wrappers_of_wrappers_and_of_built_ins(tmp_path: Path) -> None:
    engine = await build(
        {
            "outer": {"type": "prefer", "params": {"inner": "middle", "prefer": "b"}},
            "middle": {"type": "prefer", "params": {"inner": "default", "prefer": "c"}},
        },
        tmp_path,
    )
    decision = await engine.decide(Target(pipeline="auto"), "anything")
    assert decision.ranked == ["b", "c", "a"]
    assert decision.details["inner"]["details"]["inner"]["router"] == "default"


@pytest.mark.parametrize(
    ("routers", "message"),
    [
        (
            {"outer": {"type": "prefer", "params": {"inner": "nope", "prefer": "a"}}},
            "router 'outer' wraps router 'nope', which does not exist; the routers are: "
            "default, outer",
        ),
        (
            {"outer": {"type": "prefer", "params": {"inner": "outer", "prefer": "a"}}},
            "router 'outer' cannot wrap itself",
        ),
        (
            {
                "outer": {"type": "prefer", "params": {"inner": "x", "prefer": "a"}},
                "x": {"type": "prefer", "params": {"inner": "y", "prefer": "a"}},
                "y": {"type": "prefer", "params": {"inner": "x", "prefer": "a"}},
            },
            "routers wrap each other in a circle: x -> y -> x",
        ),
    ],
)
async def test_what_cannot_be_wrapped_is_a_config_error_at_build(
    tmp_path: Path, routers: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        await build(routers, tmp_path)
    assert err.value.message == message


async def test_a_router_reaches_only_what_it_says_it_wraps(tmp_path: Path) -> None:
    engine = await build(
        {
            "outer": {"type": "prefer", "params": {"inner": "ranker", "prefer": "c"}},
            "ranker": {"type": "rank"},
        },
        tmp_path,
    )
    with pytest.raises(ConfigError, match="which its wraps\\(\\) does not name"):
        engine.routers["outer"].wrapped("default")
    assert engine.routers["ranker"].deps.routers["outer"] is engine.routers["outer"]
    with pytest.raises(TypeError):
        engine.routers["outer"].deps.routers["x"] = engine.routers["outer"]  # type: ignore[index]
