"""Settings: the machine part (caches, threads) read the same way with or without a Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe.config import Settings, machine_settings
from coe.eval.embcache import cache_dir as embeddings_dir
from coe.local.model import cache_dir as local_models_dir
from coe.routing.encoder_backends import cache_root


def test_cache_dir_defaults_to_the_home_cache_also_when_set_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = Path.home() / ".cache" / "coe"
    monkeypatch.delenv("COE_CACHE_DIR", raising=False)
    assert machine_settings().cache_dir == Settings().cache_dir == home
    monkeypatch.setenv("COE_CACHE_DIR", "")
    assert machine_settings().cache_dir == Settings().cache_dir == home


def test_every_cache_reads_the_one_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("COE_ONNX_THREADS", "3")
    assert Settings().cache_dir == tmp_path
    assert cache_root() == local_models_dir() == tmp_path
    assert embeddings_dir() == tmp_path / "embeddings"
    assert machine_settings().onnx_threads == Settings().onnx_threads == 3
