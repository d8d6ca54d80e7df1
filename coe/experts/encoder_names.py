"""How experts.yaml names an encoder (`encoder:`): the grammar alone, no model code.

A name is `minilm`, `minilm-int8`, `minilm-static`, `KIND:PATH` or a bare folder (a
sentence-transformers model, as before the encoder axis existed). The kinds themselves are
plug-ins (`coe.routing.encoder_backends`); this layer knows only the built-in kinds' names,
so a third party's `KIND:PATH` is checked when the encoder is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coe.errors import ConfigError

BUILTIN_KINDS: tuple[str, ...] = ("sentence-transformers", "onnx", "static")
# Named encoders: the shipped choices, each resolved to a local folder or file when loaded.
NAMED: dict[str, str] = {
    "minilm": "sentence-transformers",
    "minilm-int8": "onnx",
    "minilm-static": "static",
}
DEFAULT_MAX_TOKENS = 256  # MiniLM's own limit; the static encoder could take more, cheaply
KIND_RE = re.compile(r"[A-Za-z][\w.-]*")


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder: its kind, its local path (None: the kind's packaged default), and how
    many tokens of a text it reads."""

    kind: str
    path: Path | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    name: str | None = None  # the named encoder this came from, for messages and reports

    @property
    def label(self) -> str:
        return self.name or f"{self.kind}:{self.path}"


def parse_spec(
    spec: str | Path | EncoderSpec | None,
    default: EncoderSpec | None = None,
    kinds: Sequence[str] = BUILTIN_KINDS,
) -> EncoderSpec:
    """An `EncoderSpec` from a name, `KIND:PATH` (KIND one of `kinds`), a folder, or None
    (`default`, else MiniLM)."""
    if isinstance(spec, EncoderSpec):
        return spec
    if spec is None or spec == "":
        return default or EncoderSpec("sentence-transformers", name="minilm")
    if isinstance(spec, Path):
        return EncoderSpec("sentence-transformers", spec)
    if spec in NAMED:
        return EncoderSpec(NAMED[spec], name=spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in (*kinds, "st"):
        if not rest:
            raise ConfigError(f"encoder {spec!r}: give a path after {kind}:")
        kind = "sentence-transformers" if kind == "st" else kind
        return EncoderSpec(kind, Path(rest).expanduser())
    if "/" in spec or spec.startswith(".") or Path(spec).exists():
        return EncoderSpec("sentence-transformers", Path(spec).expanduser())
    raise ConfigError(
        f"unknown encoder {spec!r}: use {', '.join(NAMED)}, KIND:PATH with KIND one of "
        f"{', '.join(kinds)}, or a sentence-transformers folder"
    )


def check_name(spec: str) -> None:
    """What config validation checks: the grammar, with any `KIND:PATH` whose KIND is not
    built in left to the encoder-kind plug-ins (checked when the routers are built)."""
    try:
        parse_spec(spec)
    except ConfigError:
        kind, sep, rest = spec.partition(":")
        if not (sep and rest and KIND_RE.fullmatch(kind)):
            raise
