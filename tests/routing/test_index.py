"""Nearest-neighbour indexes: exact search is exact, IVF finds planted neighbours, `auto`
switches at the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from coe.errors import ConfigError
from coe.routing.index import ExactIndex, IVFIndex, build_index


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 clusters of 100 points in 64-d, and 200 queries each near a cluster's centre."""
    rng = np.random.default_rng(7)
    centres = _unit(rng.standard_normal((60, 64)))
    member = np.repeat(np.arange(60), 100)
    x = _unit(centres[member] + 0.08 * rng.standard_normal((6000, 64)))
    q_member = rng.integers(0, 60, 200)
    q = _unit(centres[q_member] + 0.08 * rng.standard_normal((200, 64)))
    return x, q, q_member


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)])
    )


def test_exact_search_returns_the_best_examples_best_first(
    planted: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, q, _ = planted
    scores, ids = ExactIndex(x).search(q, 10)
    brute = q @ x.T
    assert ids.shape == scores.shape == (200, 10)
    np.testing.assert_array_equal(ids, np.argsort(-brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, ids, axis=1), rtol=1e-6)
    assert ExactIndex(x[:3]).search(q, 10)[1].shape == (200, 3)  # k capped at the size


def test_ivf_recall_on_planted_clusters(
    planted: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, q, q_member = planted
    _, truth = ExactIndex(x).search(q, 50)
    ivf = IVFIndex(x, n_lists=80, nprobe=4)
    scores, ids = ivf.search(q, 50)
    assert ivf.describe() == {"index": "ivf", "size": 6000, "lists": 80, "nprobe": 4}
    assert _recall(ids, truth) >= 0.97
    # the neighbours are the query's own cluster, best first, with their true similarities
    assert np.mean(ids // 100 == q_member[:, None]) >= 0.97
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), rtol=1e-5)
    # a single query takes the same path as a batch
    np.testing.assert_array_equal(ivf.search(q[:1], 50)[1], ids[:1])


def test_ivf_pads_when_its_lists_hold_fewer_than_k(
    planted: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, q, _ = planted
    scores, ids = IVFIndex(x, n_lists=60, nprobe=1).search(q[:5], 400)
    assert ids.shape == (5, 400)
    short = ids == -1
    assert short.any() and np.all(np.isneginf(scores[short]))
    assert len(set(ids[0][~short[0]])) == int((~short[0]).sum())  # no example twice


def test_auto_is_exact_below_the_threshold_and_approximate_at_it(
    planted: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x = planted[0]
    assert isinstance(build_index(x[:499], "auto", approximate_from=500), ExactIndex)
    assert isinstance(build_index(x[:500], "auto", approximate_from=500), IVFIndex)
    assert isinstance(build_index(x[:500], "exact", approximate_from=500), ExactIndex)
    assert isinstance(build_index(x[:10], "approximate", approximate_from=500), IVFIndex)
    with pytest.raises(ConfigError, match="unknown index kind"):
        build_index(x, "nearest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one example"):
        IVFIndex(x[:0])
