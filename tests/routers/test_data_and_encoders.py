"""The data loaders on slices of the real data sets, deterministic splits, the real encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coe.errors import ConfigError
from coe.routing.data import kfold, load_labelled, load_models, load_outcomes, split_by_id
from coe.routing.encoders import EncoderCache


def test_loaders_read_the_three_formats(data_dir: Path) -> None:
    rows = load_outcomes(data_dir / "llmrouter" / "train.jsonl")
    assert len(rows) == 524 and len(rows[0].scores) == 9 and rows[0].task
    models = load_models(data_dir / "llmrouter" / "models.json")
    assert set(models) == set(rows[0].scores)
    assert models["gemma-2-9b-it"].cost == pytest.approx(0.1)
    mmlu = load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")
    assert len(mmlu) == 196 and len({e.label for e in mmlu}) == 14
    hc = load_labelled(data_dir / "healthcare_routes" / "evaluation.csv")
    assert len(hc) == 103
    assert sum(e.label is None for e in hc) == 19  # utterances that must match no route
    assert any(e.alternates for e in hc)
    test = load_labelled(data_dir / "healthcare_routes" / "evaluation.csv", "test")
    assert {e.split for e in test} == {"test"} and len(test) == 24


def test_bad_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"query": "q"}\n')
    with pytest.raises(ConfigError, match="scores"):
        load_outcomes(bad)
    bad.write_text("not json\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_labelled(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_outcomes(tmp_path / "missing.jsonl")


def test_splits_are_deterministic_and_partition(data_dir: Path) -> None:
    items = load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")
    _, a_test = split_by_id(items, 0.2, seed=3)
    _, b_test = split_by_id(list(reversed(items)), 0.2, seed=3)
    assert {e.id for e in a_test} == {e.id for e in b_test} and len(a_test) == 39
    assert {e.id for e in a_test} != {e.id for e in split_by_id(items, 0.2, seed=4)[1]}
    folds = kfold(items, 5, seed=0)
    tested = [e.id for _, test in folds for e in test]
    assert sorted(tested) == sorted(e.id for e in items)
    assert all(not ({e.id for e in tr} & {e.id for e in te}) for tr, te in folds)


@pytest.mark.embed
async def test_encoder_is_normalised_and_async_matches_sync(encoders: EncoderCache) -> None:
    texts = ["Is my MRI covered?", "Solve 2x + 3 = 7", "Is my MRI covered?"]
    sync = encoders.encode_sync(texts)
    assert sync.shape == (3, 384) and sync.dtype == np.float32
    assert np.allclose(np.linalg.norm(sync, axis=1), 1.0, atol=1e-4)
    assert np.allclose(await encoders.encode(texts), sync, atol=1e-5)
    assert sync[0] @ sync[2] > 0.999 and sync[0] @ sync[1] < 0.5
    assert encoders.encode_sync([]).shape == (0, 384)


@pytest.mark.embed
def test_encoder_memo_and_missing_folder(encoders: EncoderCache, tmp_path: Path) -> None:
    # Shares the loaded weights (the same process-wide state); the memo is what is tested.
    memo = EncoderCache(memo_size=10, shared=encoders._shared)
    first = memo.encode_sync(["alpha", "beta"])
    assert np.array_equal(memo.encode_sync(["beta", "alpha"]), first[::-1])
    with pytest.raises(ConfigError, match="does not exist"):
        EncoderCache(tmp_path / "nope").encode_sync(["x"])
