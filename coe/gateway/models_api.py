"""GET /v1/models: every expert, `coe/auto` and each `coe/<pipeline>`."""

from __future__ import annotations

import time

from fastapi import APIRouter

from coe.pipeline import AUTO, MODEL_PREFIX
from coe.protocol import ModelCard, ModelList
from coe.web.deps import RuntimeDep

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep) -> ModelList:
    engine = runtime.engine
    now = int(time.time())
    cards = [
        ModelCard(
            id=AUTO,
            created=now,
            coe={
                "kind": "pipeline",
                "pipeline": runtime.config.default_pipeline,
            },
        )
    ]
    for name, spec in engine.pipelines.items():
        if MODEL_PREFIX + name == AUTO:
            continue
        cards.append(
            ModelCard(
                id=MODEL_PREFIX + name,
                created=now,
                coe={
                    "kind": "pipeline",
                    "routers": spec.routers,
                    "description": spec.description,
                },
            )
        )
    for name, expert in engine.registry.snapshot().items():
        cards.append(
            ModelCard(
                id=name,
                created=now,
                coe={
                    "kind": "expert",
                    "model": expert.model,
                    "description": expert.description,
                    "categories": [
                        c for c, names in engine.config.categories.items() if name in names
                    ],
                },
            )
        )
    return ModelList(data=cards)
