"""Final answers out of free text, so that agreement and voting compare answers, not prose.

Pure functions: a letter for multiple choice, a normalised number, or short normalised text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

Kind = Literal["choice", "number", "text", "none"]
Format = Literal["auto", "choice", "number", "text"]

_MARKERS = (
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"^#{4}\s*(.+)$", re.MULTILINE),  # GSM8K style "#### 42"
    re.compile(r"final answer\s*(?:is|:|=)?\s*[:\-]?\s*(.+)", re.IGNORECASE),
    re.compile(r"\banswer\s*(?:is|:|=)\s*[:\-]?\s*(.+)", re.IGNORECASE),
    re.compile(r"\bcorrect (?:option|choice) is\s*(.+)", re.IGNORECASE),
)
# Letters are case-sensitive: "e.g." must not read as option E.
_CHOICE_LEAD = re.compile(r"^\s*(?i:option|choice)?\s*[\[(]?([A-J])(?:[\]).:]|\s*$|\s+[-:])")
_CHOICE_STRICT = re.compile(r"^\s*(?i:option|choice)?\s*[\[(]?([A-J])[\]).:]?(?:\s|$)")
_CHOICE_ANYWHERE = re.compile(r"\(([A-J])\)|\b(?i:option|choice)\s+([A-J])\b")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s.\-/]")


@dataclass(frozen=True)
class Extracted:
    kind: Kind
    value: str

    @property
    def key(self) -> str:
        """What two answers must share to count as the same answer."""
        return f"{self.kind}:{self.value}"


NONE = Extracted("none", "")


def normalize_number(raw: str) -> str | None:
    """'1,000' → '1000', '$4.50' → '4.5', '3/4' → '0.75', '50%' → '50'; None if not a number."""
    text = raw.strip().replace(",", "").replace("$", "").rstrip("%").rstrip(".")
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = Decimal(num) / Decimal(den)
        else:
            value = Decimal(text)
    except (InvalidOperation, ZeroDivisionError, ValueError):
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def normalize_text(raw: str) -> str:
    """Lowercase, punctuation and articles dropped, whitespace collapsed."""
    text = _PUNCT.sub(" ", raw.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split()).strip(" .")


def _marked(text: str) -> str | None:
    """The text after the last answer marker ("The answer is", "Final answer:", \\boxed{})."""
    for pattern in _MARKERS:
        matches = list(pattern.finditer(text))
        if matches:
            return matches[-1].group(1).strip().splitlines()[0].strip()
    return None


def _choice(text: str, strict: bool) -> str | None:
    match = (_CHOICE_STRICT if strict else _CHOICE_LEAD).match(text)
    return match.group(1).upper() if match else None


def _last_number(text: str) -> str | None:
    for raw in reversed(_NUMBER.findall(text)):
        value = normalize_number(raw)
        if value is not None:
            return value
    return None


def extract_answer(text: str, fmt: Format = "auto") -> Extracted:
    """The final answer in `text`, as (kind, normalised value); kind `none` if it is empty."""
    text = text.strip()
    if not text:
        return NONE
    marked = _marked(text)
    focus = marked if marked is not None else text
    if fmt in ("auto", "choice"):
        # Without a marker only a clearly marked leading letter counts ("B)", "(B)", "[B]"),
        # so that "A dog ..." is not option A.
        letter = _choice(focus, strict=marked is not None)
        if letter is None and fmt == "choice":
            found = [a or b for a, b in _CHOICE_ANYWHERE.findall(text)]
            letter = found[-1] if found else None
        if letter is not None:
            return Extracted("choice", letter)
        if fmt == "choice":
            return Extracted("text", normalize_text(focus))
    if fmt in ("auto", "number"):
        number = _last_number(focus)
        if number is not None:
            return Extracted("number", number)
        if fmt == "number":
            return Extracted("text", normalize_text(focus))
    return Extracted("text", normalize_text(focus))
