"""Admin schemas: separate create, update and public shapes; secrets never go out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from coe.experts.schema import NAME_RE, ExpertLimits, ExpertSpec


class ExpertCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_RE)
    model: str = Field(min_length=1, max_length=256)
    endpoints: list[HttpUrl] = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=4000)
    skills: list[str] = Field(default_factory=list, max_length=256)
    system_prompt: str | None = Field(None, max_length=8000)
    cost: float = Field(0.0, ge=0)
    api_key: str | None = Field(None, max_length=512)
    limits: ExpertLimits = ExpertLimits()
    defaults: dict[str, Any] = Field(default_factory=dict)

    def to_spec(self) -> ExpertSpec:
        return ExpertSpec.model_validate(self.model_dump())


class ExpertUpdate(BaseModel):
    """Only the fields given change; `name` is the URL's."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=256)
    endpoints: list[HttpUrl] | None = Field(None, min_length=1, max_length=64)
    description: str | None = Field(None, max_length=4000)
    skills: list[str] | None = Field(None, max_length=256)
    system_prompt: str | None = Field(None, max_length=8000)
    cost: float | None = Field(None, ge=0)
    api_key: str | None = Field(None, max_length=512)
    limits: ExpertLimits | None = None
    defaults: dict[str, Any] | None = None

    def apply(self, current: ExpertSpec) -> ExpertSpec:
        data = current.model_dump()
        data.update(self.model_dump(exclude_unset=True))
        return ExpertSpec.model_validate(data)


class ExpertPublic(BaseModel):
    name: str
    model: str
    endpoints: list[str]
    description: str
    skills: list[str]
    system_prompt: str | None
    cost: float
    limits: dict[str, Any]
    defaults: dict[str, Any]
    has_api_key: bool

    @classmethod
    def of(cls, spec: ExpertSpec) -> ExpertPublic:
        return cls(
            name=spec.name,
            model=spec.model,
            endpoints=spec.base_urls(),
            description=spec.description,
            skills=spec.skills,
            system_prompt=spec.system_prompt,
            cost=spec.cost,
            limits=spec.limits.model_dump(),
            defaults=spec.defaults,
            has_api_key=spec.api_key is not None,
        )


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    rate_limit_rpm: int | None = Field(None, ge=1, le=1_000_000)


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reseed_experts: bool = Field(
        False, description="also replace the stored registry with the file's experts"
    )
