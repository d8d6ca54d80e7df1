"""OpenAI wire models for the endpoints we serve. Unknown fields are kept and passed on.

One field is ours: `coe`, a request's routing policy (coe.routing.policy), which the OpenAI
client sends with `extra_body={"coe": {...}}`; it is validated strictly and never reaches
an expert.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coe.errors import InvalidRequest
from coe.routing.policy import RoutingPolicy

log = logging.getLogger(__name__)
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    user: str | None = None
    coe: RoutingPolicy | None = Field(None, description="this request's routing policy")

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    def log_unknown(self, request_id: str) -> None:
        """Fields we do not know go to the expert as they are; the log says which."""
        if unknown := self.unknown_fields():
            log.info(
                "request %s: passing unrecognised fields to the expert: %s", request_id, unknown
            )

    def check_limits(self, max_messages: int, max_tokens: int) -> None:
        """Refuse more messages or a larger token budget than the gateway allows (400)."""
        if len(self.messages) > max_messages:
            raise InvalidRequest(
                f"messages has {len(self.messages)} entries; the limit is {max_messages}",
                param="messages",
            )
        for key in ("max_tokens", "max_completion_tokens"):
            value = getattr(self, key)
            if value is not None and value > max_tokens:
                raise InvalidRequest(f"{key} is {value}; the limit is {max_tokens}", param=key)

    def upstream_body(self) -> dict[str, Any]:
        """The body handed to the engine: what the client set, unknown fields and the `coe`
        policy included. The engine routes by `coe` and takes it out before any expert
        sees the body (`Engine.plan`, `coe.routing.policy.expert_body`)."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("coe/auto", min_length=1, max_length=256)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    query: str | None = Field(None, min_length=1)
    coe: RoutingPolicy | None = Field(None, description="the routing policy to explain")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "coe"
    coe: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """First problem of a pydantic error list, as a sentence and a dotted param."""
    parts = []
    param = None
    for e in errors[:3]:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "Invalid request: " + "; ".join(parts) + more, param
