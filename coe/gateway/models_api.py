"""GET /v1/models: every expert, `coe/auto` and each `coe/<pipeline>`."""

from __future__ import annotations

import time

from fastapi import APIRouter

from coe.gateway.deps import ServicesDep
from coe.gateway.wire import ModelCard, ModelList
from coe.pipeline import AUTO, MODEL_PREFIX

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(services: ServicesDep) -> ModelList:
    engine = services.engine
    now = int(time.time())
    cards = [
        ModelCard(
            id=AUTO,
            created=now,
            coe={
                "kind": "pipeline",
                "pipeline": services.config.default_pipeline,
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
                    "categories": expert.categories,
                },
            )
        )
    return ModelList(data=cards)
