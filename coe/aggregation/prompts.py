"""Every prompt the aggregation layer sends, in one place (Mixture-of-Agents / Symbolic-MoE).

The instructions come before the question and hold no digits, so that a judge that only
echoes them cannot be mistaken for one that picked an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_ANSWER_CHARS = 4000  # each candidate answer in a prompt, so k answers cannot blow the context

SYNTHESIZE = (
    "You are given a question and candidate answers written by several expert models. "
    "Some of the candidate answers may be wrong, incomplete or biased. Read them critically, "
    "keep what is correct, fix what is wrong, and write one single, accurate, well-reasoned "
    "answer to the question. Answer the question directly; do not mention the candidates."
)

JUDGE = (
    "You are given a question and candidate answers written by several expert models. "
    "Some of the candidate answers may be wrong. Decide which candidate answers the question "
    "best and most correctly. Reply only with the label of that candidate, in the form "
    "'Best: <number>', and nothing else."
)

# Sampling for the judge: it only names a candidate.
JUDGE_PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 16}


def _candidates(answers: Sequence[str]) -> str:
    parts = []
    for i, text in enumerate(answers, start=1):
        clipped = text if len(text) <= MAX_ANSWER_CHARS else text[:MAX_ANSWER_CHARS] + " [...]"
        parts.append(f"Candidate {i}:\n{clipped.strip()}")
    return "\n\n".join(parts)


def _prompt(instructions: str, question: str, answers: Sequence[str]) -> str:
    return f"{instructions}\n\nQuestion:\n{question.strip()}\n\n{_candidates(answers)}"


def _history(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation before the last user turn, which the prompt replaces."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    return list(messages[:last]) if last is not None else list(messages)


def synthesize_messages(
    messages: Sequence[dict[str, Any]], question: str, answers: Sequence[str]
) -> list[dict[str, Any]]:
    """The aggregator's conversation: the history, then one user turn with the candidates."""
    content = _prompt(SYNTHESIZE, question, answers) + "\n\nYour answer:"
    return [*_history(messages), {"role": "user", "content": content}]


def judge_messages(question: str, answers: Sequence[str]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": _prompt(JUDGE, question, answers)}]
