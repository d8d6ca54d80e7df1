"""Fixtures for evaluation tests: the real encoder, loaded once per session."""

from __future__ import annotations

import os

import pytest

from coe.routing.encoders import EncoderCache

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def encoders() -> EncoderCache:
    enc = EncoderCache(memo_size=50_000)
    enc.model()
    return enc
