"""Answer extraction, voting, agreement, judge parsing and prompts: pure functions, no I/O."""

from __future__ import annotations

import pytest

from coe.aggregation import Ballot, all_agree, extract_answer, majority_vote, parse_verdict
from coe.aggregation.extract import Extracted, normalize_number
from coe.aggregation.fanout import sum_usage
from coe.aggregation.prompts import judge_messages, synthesize_messages


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("The answer is 4.", "number", "4"),
        ("2 + 2 = 4", "number", "4"),
        ("The answer to this classic math problem is 4.", "number", "4"),
        ("The final answer is \\boxed{1,000}", "number", "1000"),
        ("Work...\n#### 42", "number", "42"),
        ("It costs $4.50", "number", "4.5"),
        ("3/4", "number", "0.75"),
        ("A) Mars", "choice", "A"),
        ("(C) because it is red", "choice", "C"),
        ("[B] Which option?", "choice", "B"),
        ("The answer is B.", "choice", "B"),
        ("Answer: (D) Saturn", "choice", "D"),
        ("A dog is a pet", "text", "dog is pet"),  # "A " alone is not option A
        ("e.g. the thing", "text", "e.g. thing"),  # nor is "e." option E
        ("The capital of France is Paris.", "text", "capital of france is paris"),
        ("The answer is Paris", "text", "paris"),
        ("  ", "none", ""),
    ],
)
def test_extract_answer(text: str, kind: str, value: str) -> None:
    assert extract_answer(text) == Extracted(kind, value)  # type: ignore[arg-type]


def test_extract_answer_with_a_declared_format() -> None:
    assert extract_answer("Mars, which is option (B).", "choice") == Extracted("choice", "B")
    assert extract_answer("I think B is right", "choice").kind == "text"
    assert extract_answer("A) 12 apples", "number") == Extracted("number", "12")
    assert extract_answer("In 1889 it opened", "text") == Extracted("text", "in 1889 it opened")


def test_normalize_number() -> None:
    assert normalize_number("1,000.0") == "1000"
    assert normalize_number("-0.50") == "-0.5"
    assert normalize_number("50%") == "50"
    assert normalize_number("1/0") is None and normalize_number("abc") is None


def ballot(expert: str, text: str, score: float = 0.0) -> Ballot:
    return Ballot(expert, score, extract_answer(text))


def test_majority_vote_counts_final_answers_not_prose() -> None:
    result = majority_vote(
        [
            ballot("a", "The answer is 7.", 0.1),
            ballot("b", "7", 0.2),
            ballot("c", "The answer is 9", 0.9),
        ]
    )
    assert result.value == "7" and result.counts == {"7": 2, "9": 1}
    assert result.winner == "b"  # the best-scored expert of the winning group
    assert not result.tie_broken


def test_majority_vote_tie_goes_to_the_best_router_score() -> None:
    result = majority_vote([ballot("a", "B)", 0.2), ballot("b", "(C)", 0.7)])
    assert result.winner == "b" and result.value == "C" and result.tie_broken
    # empty answers do not vote while anything else does
    assert majority_vote([ballot("a", "", 0.9), ballot("b", "4", 0.1)]).winner == "b"
    assert majority_vote([ballot("a", "", 0.9)]).winner == "a"
    with pytest.raises(ValueError):
        majority_vote([])


def test_all_agree() -> None:
    assert all_agree([ballot("a", "The answer is 4."), ballot("b", "2 + 2 = 4")])
    assert not all_agree([ballot("a", "4"), ballot("b", "5")])
    assert not all_agree([ballot("a", "4")])  # one answer agrees with nobody
    assert not all_agree([ballot("a", ""), ballot("b", "")])


@pytest.mark.parametrize(
    ("verdict", "choice"),
    [
        ("Best: 2", 2),
        ("2", 2),
        ("Candidate 3.", 3),
        ("The best answer is candidate 3.", 3),
        ("the best one is the second", 2),
        ("Candidate 1 is wrong, candidate 2 is correct.", 2),
        ("Answer 3 is the best", 3),
        ("I pick 2 because it is right", 2),
        ("Candidate 1 is wrong", None),  # says what is wrong, not what is best
        ("I like answer 1 and answer 2", None),  # two named, neither marked best
        ("Best: 9", None),  # out of range
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_verdict(verdict: str, choice: int | None) -> None:
    assert parse_verdict(verdict, 3) == choice


def test_sum_usage_ignores_missing_parts() -> None:
    total = sum_usage(
        [
            {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
            None,
            {"usage": None},
            {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
        ]
    )
    assert total == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_prompts_carry_question_candidates_and_history() -> None:
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    messages = synthesize_messages(history, "What is 2+2?", ["4", "five"])
    assert messages[:3] == history[:3] and messages[-1]["role"] == "user"
    prompt = messages[-1]["content"]
    assert "may be wrong" in prompt and "What is 2+2?" in prompt
    assert "Candidate 1:\n4" in prompt and "Candidate 2:\nfive" in prompt
    judge = judge_messages("q", ["x", "y"])[0]["content"]
    assert "Best: <number>" in judge and "Candidate 2:\ny" in judge
    # A judge that only echoes its instructions must not read as a choice.
    assert parse_verdict(judge.split("Question:")[0], 2) is None
