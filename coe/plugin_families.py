"""Every plug-in family in one table: its entry-point group, base class, naming attribute,
built-ins and folder setting. Paths are "module:attr" strings, imported only when a family
is loaded, so reading the table imports nothing heavy.

Built-ins load through `Plugins.load_target`, the function that loads an entry point's
target, so they need no installed metadata and behave exactly like a third party's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One kind of plug-in. `builtins` are "name -> module:attr"; `folders` names the
    experts.yaml setting that lists plug-in folders, if the family has one."""

    name: str
    group: str
    base: str
    attr: str
    what: str
    label: str
    builtins: tuple[str, ...] = ()
    folders: str | None = None


ROUTERS = Family(
    name="routers",
    group="coe.routers",
    base="coe.routing.base:Router",
    attr="type_name",
    what="router",
    label="type",
    # The built-in routers are files of the repository's routers/ folder, the default of
    # `routers_dirs`: they load as folder plug-ins.
    folders="routers_dirs",
)
SWAP_CONTROLLERS = Family(
    name="swap controllers",
    group="coe.swap_controllers",
    base="coe.pool.controllers.base:SwapController",
    attr="kind",
    what="swap controller",
    label="kind",
    builtins=(
        "static -> coe.pool.controllers.static:StaticController",
        "process -> coe.pool.controllers.process:ProcessController",
        "lora -> coe.pool.controllers.lora:LoraController",
        "sleep -> coe.pool.controllers.sleep:SleepController",
    ),
    folders="controllers_dirs",
)
AGGREGATIONS = Family(
    name="aggregation strategies",
    group="coe.aggregations",
    base="coe.aggregation.strategy:Strategy",
    attr="name",
    what="aggregation",
    label="strategy",
    builtins=(
        "synthesize -> coe.aggregation.strategies:Synthesize",
        "vote -> coe.aggregation.strategies:Vote",
        "first -> coe.aggregation.strategies:First",
        "best -> coe.aggregation.strategies:Best",
    ),
)
ENCODERS = Family(
    name="encoder kinds",
    group="coe.encoders",
    base="coe.routing.encoder_backends:EncoderKind",
    attr="kind",
    what="encoder",
    label="kind",
    builtins=(
        "sentence-transformers -> coe.routing.encoder_backends:SentenceTransformerKind",
        "onnx -> coe.routing.encoder_backends:OnnxKind",
        "static -> coe.routing.encoder_backends:StaticKind",
    ),
)
BATCH_ENGINES = Family(
    name="batch engines",
    group="coe.batch_engines",
    base="coe.batch.engines:BatchEngine",
    attr="name",
    what="batch",
    label="engine",
    builtins=(
        "local -> coe.cli.local_engine:LocalEngine",
        "ray -> coe.ray_batch.engine:RayEngine",
    ),
)

FAMILIES: tuple[Family, ...] = (ROUTERS, SWAP_CONTROLLERS, AGGREGATIONS, ENCODERS, BATCH_ENGINES)


def builtin(entry: str) -> tuple[str, str]:
    """("static", "coe.pool.controllers.static:StaticController") from a table row entry."""
    name, _, target = entry.partition("->")
    return name.strip(), target.strip()
