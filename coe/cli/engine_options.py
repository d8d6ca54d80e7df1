"""Each batch engine's options as `coe batch run` options: one per field of its `Options`
model (`--field-name`, the description as help), and `--engine` over the registry."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import click
from pydantic.fields import FieldInfo

from coe.batch.engines import DEFAULT_ENGINE, BatchEngine
from coe.errors import ConfigError
from coe.plugins import Plugins


def engine_params(engines: Plugins[BatchEngine[Any]]) -> list[click.Parameter]:
    """`--engine`, then every engine's options (a name two engines declare is an error)."""
    names = engines.names()
    summary = "; ".join(f"{n}: {engines.get(n).summary}" for n in names)
    params: list[click.Parameter] = [
        click.Option(
            ["--engine"],
            type=click.Choice(names),
            default=DEFAULT_ENGINE,
            show_default=True,
            help=summary,
        )
    ]
    seen: dict[str, str] = {"engine": ""}
    for name in names:
        for field, info in engines.get(name).Options.model_fields.items():
            if field in seen:
                raise ConfigError(
                    f"batch engines {seen[field] or 'coe'} and {name} both have an option {field!r}"
                )
            seen[field] = name
            params.append(_option(name, field, info))
    return params


def _option(engine: str, field: str, info: FieldInfo) -> click.Option:
    kind, optional = _unwrap(info.annotation)
    help_ = info.description or ""
    if not help_.startswith(f"{engine}"):
        help_ = f"{engine}: {help_}"
    default = None if info.default is None else info.default
    extra: dict[str, Any] = {}
    if typing.get_origin(kind) is Literal:
        extra["type"] = click.Choice([str(a) for a in typing.get_args(kind)])
    elif kind is Path:
        extra["type"] = click.Path(exists=True, dir_okay=False, path_type=Path)
    elif kind in (int, float, str) and optional:
        extra["type"] = kind
    return click.Option(
        [f"--{field.replace('_', '-')}"],
        default=default,
        show_default=default is not None,
        help=help_,
        **extra,
    )


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """`X | None` as (X, True); anything else as (it, False)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False
