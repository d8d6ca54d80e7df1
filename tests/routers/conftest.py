"""Fixtures for router tests: the real encoder (once per session), real data slices
(tests/data/), a real ChatCaller posting to the vLLM expert, and a counting wrapper around it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from coe.experts.schema import CoeConfig
from coe.routing.base import ChatCaller, RouteContext, Router, RouterDeps
from coe.routing.data import (
    LabelledExample,
    OutcomeExample,
    load_labelled,
    load_outcomes,
)
from coe.routing.encoders import EncoderCache
from coe.routing.registry import RouterRegistry
from coe.store.base import Store
from coe.store.embedded import EmbeddedStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROUTERS_DIR = Path(__file__).resolve().parents[2] / "routers"  # the repository's built-ins


@pytest.fixture(scope="session")
def mmlu(data_dir: Path) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """MMLU-Pro: 10 questions per category to train on, the next 4 to test (14 categories)."""
    items = load_labelled(data_dir / "mmlu_pro" / "validation.jsonl")
    seen: dict[str, int] = {}
    train, test = [], []
    for e in items:
        n = seen[e.label or ""] = seen.get(e.label or "", 0) + 1
        if n <= 10:
            train.append(e)
        elif n <= 14:
            test.append(e)
    return train, test


@pytest.fixture(scope="session")
def outcomes(data_dir: Path) -> tuple[list[OutcomeExample], list[OutcomeExample]]:
    """LLMRouter outcomes: the slice's short queries (up to 40 per task), split 3:1."""
    rows = load_outcomes(data_dir / "llmrouter" / "train.jsonl")
    train = [r for i, r in enumerate(rows) if i % 4]
    return train, [r for i, r in enumerate(rows) if not i % 4]


def make_config(
    experts: Sequence[str],
    *,
    default: str | None = None,
    categories: dict[str, list[str]] | None = None,
    url: str = "http://127.0.0.1:9",
    model: str = "smollm2",
    costs: dict[str, float] | None = None,
) -> CoeConfig:
    return CoeConfig.model_validate(
        {
            "experts": [
                {
                    "name": e,
                    "model": model,
                    "endpoints": [url],
                    "description": f"{e} expert",
                    "cost": (costs or {}).get(e, 0.0),
                }
                for e in experts
            ],
            "default_expert": default or experts[0],
            "categories": categories or {},
        }
    )


def make_router(
    type_name: str,
    params: dict[str, Any],
    config: CoeConfig,
    encoders: EncoderCache,
    *,
    store: Store | None = None,
    chat: ChatCaller | None = None,
    base_dir: Path | None = None,
) -> Router:
    registry = RouterRegistry()
    registry.load_dir(ROUTERS_DIR)
    deps = RouterDeps(
        config=config,
        store=store or EmbeddedStore(),
        base_dir=base_dir or Path.cwd(),
        chat=chat,
        encoders=encoders,
    )
    return registry.build(type_name, type_name, params, deps)


def ctx_of(config: CoeConfig) -> RouteContext:
    return RouteContext(
        experts={e.name: e for e in config.experts},
        default_expert=config.default_expert,
        categories=config.categories,
    )


class HttpChat:
    """A real ChatCaller: POST {base_url}/v1/chat/completions for the named expert."""

    def __init__(self, config: CoeConfig) -> None:
        self.config = config

    async def __call__(self, expert: str, messages: list[dict[str, Any]], **params: Any) -> str:
        spec = self.config.expert(expert)
        assert spec is not None, expert
        body = {
            "model": spec.model,
            "messages": messages,
            **params,
            "max_tokens": min(int(params.get("max_tokens", 32)), 32),
        }
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(f"{spec.base_urls()[0]}/v1/chat/completions", json=body)
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"] or "")


@dataclass
class CountingChat:
    """Wraps a real ChatCaller and records every call it forwards."""

    inner: ChatCaller
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, expert: str, messages: list[dict[str, Any]], **params: Any) -> str:
        text = await self.inner(expert, messages, **params)
        self.calls.append((expert, text))
        return text
