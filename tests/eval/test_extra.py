"""Extra training data: MMLU rows mapped onto MMLU-Pro categories, repeats of evaluation
questions dropped before use (real encoder, real data slices)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from coe.eval.extra import dedupe, load_mmlu, normalise, subject_map
from coe.routing.data import LabelledExample, load_labelled
from coe.routing.encoders import EncoderCache

pytestmark = pytest.mark.embed


def test_subject_map_covers_mmlu_with_known_categories(data_dir: Path) -> None:
    mapping = subject_map()
    pro = {e.label for e in load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")}
    assert len(mapping) == 57 and set(mapping.values()) <= pro


def test_load_mmlu_maps_topics_and_drops_the_header_line(data_dir: Path) -> None:
    rows = load_mmlu(data_dir / "mmlu" / "mmlu.jsonl")
    assert len(rows) == 16  # 17 lines less the one whose correct_answer is "answer"
    assert {e.label for e in rows} == {"physics", "law", "computer science", "economics"}
    with_options = load_mmlu(data_dir / "mmlu" / "mmlu.jsonl", with_options=True)
    assert "The options are: (A) " in with_options[0].text
    assert len(load_mmlu(data_dir / "mmlu" / "mmlu.jsonl", per_category=1)) == 4


def test_dedupe_drops_planted_exact_and_near_duplicates(
    data_dir: Path, encoders: EncoderCache
) -> None:
    pro = load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")[:40]
    stems = [e.text.split(" The options are:")[0] for e in pro]
    clean = load_mmlu(data_dir / "mmlu" / "mmlu.jsonl")
    planted = [
        # the same question, other case and punctuation: exact after normalising
        LabelledExample("dup-exact", stems[0].upper().replace(",", " ,"), "biology"),
        # MMLU-Pro adds options; the stem matches
        LabelledExample("dup-options", pro[1].text, "biology"),
        # one word changed: a near duplicate
        LabelledExample("dup-near", stems[2].replace(" the ", " a ", 1) + " ", "biology"),
    ]
    assert normalise(planted[0].text) == normalise(stems[0])
    assert normalise(stems[2]) != normalise(planted[2].text)
    result = dedupe([*clean, *planted], pro, encoders)
    kept = {e.id for e in result.kept}
    assert not kept & {"dup-exact", "dup-options", "dup-near"}
    assert kept == {e.id for e in clean}  # unrelated MMLU questions all stay
    assert result.exact == 2 and result.near == 1 and result.dropped == 3


def test_dedupe_catches_reworded_questions_by_token_set(
    data_dir: Path, encoders: EncoderCache
) -> None:
    pro = load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")[:40]
    stem = pro[3].text.split(" The options are:")[0]
    words = stem.split()
    reordered = " ".join(words[len(words) // 2 :] + words[: len(words) // 2])
    row = LabelledExample("dup-reordered", reordered, "biology")
    strict = dedupe([row], pro, encoders, cosine=1.01, token_jaccard=0.8)
    assert strict.near == 1  # same tokens, so Jaccard catches what the cosine cut-off let by
    assert dedupe([replace(row, id="x")], pro, encoders, cosine=1.01, token_jaccard=1.01).near == 0
