"""The encoder axis: specs, the three real back-ends, truncation, the query LRU, bound views."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from coe.errors import ConfigError
from coe.experts.schema import CoeConfig
from coe.routing.encoder_backends import (
    EncoderSpec,
    clip_chars,
    default_static_path,
    head_tail,
    length_buckets,
    parse_spec,
)
from coe.routing.encoder_build import build_static
from coe.routing.encoders import EncoderCache

TEXTS = [
    "Translate good morning into French.",
    "What is 17 times 23?",
    "Write a Python function that reverses a string.",
]


@pytest.fixture(scope="module")
def shared(encoders: EncoderCache) -> EncoderCache:
    """One cache per module: each back-end loads once, MiniLM once per session (the loaded
    models are the session's; the counters are this cache's own)."""
    cache = EncoderCache()
    cache._shared.models = encoders._shared.models
    return cache


@pytest.fixture(scope="module")
def static_folder() -> Path:
    """The distilled static encoder (built once into the cache folder, ~1-2 min the first
    time on two cores; every later run finds it)."""
    return build_static()


def test_specs_name_kind_and_path(tmp_path: Path) -> None:
    assert parse_spec(None) == EncoderSpec("sentence-transformers", name="minilm")
    assert parse_spec("minilm-int8").kind == "onnx"
    assert parse_spec("minilm-static").kind == "static"
    assert parse_spec(f"static:{tmp_path}") == EncoderSpec("static", tmp_path)
    assert parse_spec(f"st:{tmp_path}").kind == "sentence-transformers"
    assert parse_spec(str(tmp_path)) == EncoderSpec("sentence-transformers", tmp_path)
    default = EncoderSpec("onnx", name="minilm-int8")
    assert parse_spec(None, default) is default
    with pytest.raises(ConfigError, match="unknown encoder 'minilm-fp8'"):
        parse_spec("minilm-fp8")
    with pytest.raises(ConfigError, match="give a path after onnx"):
        parse_spec("onnx:")
    with pytest.raises(ConfigError, match="does not exist"):
        EncoderCache(f"static:{tmp_path / 'nope'}").encode_sync(["x"])


def test_config_refuses_an_unknown_encoder() -> None:
    expert = {"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:1"]}
    doc = {"experts": [expert], "default_expert": "a"}
    assert CoeConfig.model_validate({**doc, "encoder": "minilm-static"}).encoder == "minilm-static"
    with pytest.raises(ValueError, match="unknown encoder 'bert'"):
        CoeConfig.model_validate({**doc, "encoder": "bert"})


def test_head_tail_keeps_both_ends() -> None:
    ids = list(range(100))
    cut = head_tail(ids, 20)
    assert cut == list(range(15)) + list(range(95, 100))
    assert head_tail(ids, 200) == ids
    text = "a" * 5000 + "QUESTION"
    clipped = clip_chars(text, 64)
    assert len(clipped) <= 64 * 8 + 1 and clipped.endswith("QUESTION")


def test_length_buckets_do_not_pad_short_texts_to_long_ones() -> None:
    lengths = [12, 300, 10, 11, 250, 14, 13, 9]
    buckets = length_buckets(lengths, batch_size=4)
    assert sorted(int(i) for b in buckets for i in b) == list(range(8))  # each text once
    assert all(len(b) <= 4 for b in buckets)
    for b in buckets:  # a call's longest is near its shortest
        sizes = [lengths[i] for i in b]
        assert max(sizes) <= min(sizes) * 1.3 + 8
    assert [sorted(int(i) for i in b) for b in buckets] == [[0, 2, 3, 7], [5, 6], [1, 4]]


@pytest.mark.embed
def test_int8_onnx_matches_minilm(shared: EncoderCache) -> None:
    fp32 = shared.encode_sync(TEXTS, "minilm")
    int8 = shared.encode_sync(TEXTS, "minilm-int8")
    assert int8.shape == (3, 384) and int8.dtype == np.float32
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)
    assert (fp32 * int8).sum(axis=1).min() > 0.99


@pytest.mark.embed
def test_long_inputs_are_cut_not_refused(shared: EncoderCache) -> None:
    """MiniLM's position table has 512 rows: an uncut 3,000-token text fails in ONNX."""
    filler = "The quarterly report covers revenue, costs and outlook. " * 300
    question = " Now write a Python function that reverses a string."
    for name in ("minilm", "minilm-int8"):
        vecs = shared.encode_sync([filler + question, filler, TEXTS[2]], name)
        assert vecs.shape == (3, 384)
        # the tail survives the cut: the question pulls the long text towards it
        assert vecs[0] @ vecs[2] > vecs[1] @ vecs[2] + 0.02


@pytest.mark.embed
def test_static_encoder_builds_loads_and_separates(
    shared: EncoderCache, static_folder: Path
) -> None:
    assert static_folder == default_static_path()
    assert build_static() == static_folder  # built once: the second call finds it
    vecs = shared.encode_sync(
        [*TEXTS, "Please translate 'good night' into French."], "minilm-static"
    )
    assert vecs.shape == (4, 256)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    sims = vecs @ vecs.T
    assert sims[0, 3] > max(sims[0, 1], sims[0, 2]) + 0.1
    assert shared.model("minilm-static").inline
    # an empty or all-unknown text is the zero vector, not a crash
    assert not shared.encode_sync([""], "minilm-static").any()


@pytest.mark.embed
async def test_repeated_queries_hit_the_bounded_cache(static_folder: Path) -> None:
    enc = EncoderCache("minilm-int8", query_cache_size=2)
    first = await enc.encode(["alpha query"])
    calls = enc.calls
    again = await enc.encode(["alpha query"])
    assert np.array_equal(first, again) and enc.calls == calls and enc.cache_hits == 1
    await enc.encode(["beta query"])
    await enc.encode(["gamma query"])  # the LRU holds two: alpha is out
    calls = enc.calls
    await enc.encode(["alpha query"])
    assert enc.calls == calls + 1
    nocache = EncoderCache("minilm-int8", query_cache_size=0, shared=None)
    await nocache.encode(["alpha query"])
    await nocache.encode(["alpha query"])
    assert nocache.calls == 2 and nocache.cache_hits == 0


@pytest.mark.embed
async def test_static_encodes_on_the_loop_and_concurrent_asks_batch(
    shared: EncoderCache, static_folder: Path
) -> None:
    static = shared.bound("minilm-static")
    await static.encode(["warm up"])  # the first ask loads the model off the loop
    before = static.calls
    out = await asyncio.gather(*(static.encode([f"query {i}"]) for i in range(8)))
    assert all(v.shape == (1, 256) for v in out)
    assert static.calls == before + 8  # inline: one call each, no queue, no thread hop
    onnx = shared.bound("minilm-int8")
    await onnx.encode(["warm up"])
    before = onnx.calls
    out = await asyncio.gather(*(onnx.encode([f"query {i}"]) for i in range(8)))
    assert onnx.calls - before <= 3  # queued asks share model calls


@pytest.mark.embed
def test_bound_views_share_models_but_keep_their_default(shared: EncoderCache) -> None:
    a = shared.bound("minilm-int8")
    b = a.bound(None)
    assert a.resolve().kind == "onnx" and b.resolve().kind == "sentence-transformers"
    a.encode_sync(["x"])
    assert a.model() is shared.model("minilm-int8")  # loaded once for every view
    assert a.identity() != b.identity()
