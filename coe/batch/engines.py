"""Batch engines by name: `coe batch run --engine NAME` looks one up here. An engine is a
`BatchEngine` subclass with a `name`, an `Options` model (its own command-line options:
one field each, its description the help) and one `run`. Built-ins load through the same
path as third-party ones (the `coe.batch_engines` entry-point group), so a third engine
is one package that names its class in that group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.plugin_families import BATCH_ENGINES
from coe.plugins import Plugins

DEFAULT_ENGINE = "local"


class EngineOptions(BaseModel):
    """An engine's own options. Each field is a command-line option (`--field-name`) whose
    help is the field's description; a `Path` field names an existing file."""

    model_config = ConfigDict(extra="forbid")


OptionsT = TypeVar("OptionsT", bound=EngineOptions)


class BatchEngine(ABC, Generic[OptionsT]):
    """Routes and answers batch input files, one output line per input line in order."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # a few words for `--engine`'s help
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    # settings this engine always runs with (the local engine: no Redis)
    settings_overrides: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def run(
        self,
        inputs: Sequence[str],
        output: str,
        settings: Settings,
        config: CoeConfig | None,
        options: OptionsT,
    ) -> dict[str, Any]:
        """Run the job; its counts (`request_counts`, and whatever else the engine says).
        `config` None: the engine reads it as `settings` say."""


def batch_engines() -> Plugins[BatchEngine[Any]]:
    """The engines: the built-ins, then those installed packages name in `coe.batch_engines`."""
    engines: Plugins[BatchEngine[Any]] = Plugins.of(BATCH_ENGINES)
    engines.load_builtins(BATCH_ENGINES)
    engines.load_entry_points()
    return engines
