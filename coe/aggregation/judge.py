"""Read a judge model's verdict ("Best: 2", "Candidate 2 is best", "2") into a choice, or None.

Strongest signal first; a verdict that names several candidates without saying which is
best is unparseable rather than guessed.
"""

from __future__ import annotations

import re

_ORDINALS = {
    "first": 1,
    "one": 1,
    "second": 2,
    "two": 2,
    "third": 3,
    "three": 3,
    "fourth": 4,
    "four": 4,
    "fifth": 5,
    "five": 5,
}
_LABEL = r"(?:candidate|answer|response|option|choice|number|no\.?|#)"
_PICK = r"(\d+|" + "|".join(_ORDINALS) + r")"
_BEST = re.compile(
    rf"\bbest\b\W*(?:one\b\W*)?(?:{_LABEL}\W*)?(?:is|would be|=|:)?\W*"
    rf"(?:the\s+)?(?:{_LABEL}\W*)?{_PICK}\b",
    re.IGNORECASE,
)
# Between a label and its praise: no clause break and no other candidate named.
_FILLER = r"(?:(?!(?:candidate|answer|response|option|choice)\b)[^.\n,;]){0,40}?"
_NAMED_BEST = re.compile(
    rf"\b{_LABEL}\W*{_PICK}\b{_FILLER}\b(?:is|was)\s+(?:the\s+)?(?:best|correct|right)\b",
    re.IGNORECASE,
)
_NOT = r"(?!\s+(?:is|was)\s+(?:not|wrong|incorrect))"  # "candidate 1 is wrong" picks nothing
_LEADING = re.compile(rf"^\W*(?:{_LABEL}\W*)?(\d+)\b{_NOT}", re.IGNORECASE)
_MENTION = re.compile(rf"\b{_LABEL}\W*(\d+)\b{_NOT}", re.IGNORECASE)
_BARE = re.compile(rf"(?<![\d.])\b(\d+)\b(?![\d.]){_NOT}")


def _number(token: str) -> int:
    return int(token) if token.isdigit() else _ORDINALS[token.lower()]


def parse_verdict(text: str, n: int) -> int | None:
    """The 1-based candidate the judge picked among `n`, or None when it is not clear."""

    def in_range(value: int) -> bool:
        return 1 <= value <= n

    for pattern in (_BEST, _NAMED_BEST, _LEADING):
        match = pattern.search(text)
        if match and in_range(choice := _number(match.group(1))):
            return choice
    for pattern in (_MENTION, _BARE):
        values = {int(v) for v in pattern.findall(text)}
        picked = {v for v in values if in_range(v)}
        if len(picked) == 1:
            return picked.pop()
        if picked:
            return None  # several candidates named, none marked best
    return None
