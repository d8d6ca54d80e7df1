"""Admin schemas: separate create, update and public shapes; secrets never go out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from coe.experts.schema import NAME_RE, ExpertLimits, ExpertSpec
from coe.lifecycle.live import Swapped
from coe.security.redact import redact_url, restore_masked


class ExpertCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `true` is no number

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

    model_config = ConfigDict(extra="forbid", strict=True)  # `true` is no number

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
        if self.endpoints is not None:  # an endpoint sent back as shown keeps its password
            sent = [str(u) for u in self.endpoints]
            data["endpoints"] = restore_masked(sent, [str(u) for u in current.endpoints])
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
            endpoints=[redact_url(u) for u in spec.base_urls()],
            description=spec.description,
            skills=spec.skills,
            system_prompt=spec.system_prompt,
            cost=spec.cost,
            limits=spec.limits.model_dump(),
            defaults=spec.defaults,
            has_api_key=spec.api_key is not None,
        )


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `true` is no number

    name: str = Field(min_length=1, max_length=128)
    rate_limit_rpm: int | None = Field(None, ge=1, le=1_000_000)


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `true` is no number

    reseed_experts: bool = Field(
        False, description="also replace the stored registry with the file's experts"
    )


class RebuildPublic(BaseModel):
    """A router rebuild: what now serves here, and the rebuild number every replica was told."""

    rebuilt: list[str]
    generation: int = Field(description="engines this replica has built, this one included")
    rebuild: int | None = Field(description="the rebuild every replica was told to make")
    config_version: int | None = Field(description="the stored config version serving")
    replica: str

    @classmethod
    def of(cls, done: Swapped, replica: str) -> RebuildPublic:
        return cls(
            rebuilt=sorted(done.engine.routers),
            generation=done.generation,
            rebuild=done.rebuild,
            config_version=done.config_version,
            replica=replica,
        )


class ReloadPublic(BaseModel):
    """A config reload: the config now stored for (and told to) every replica."""

    pipelines: list[str]
    routers: list[str]
    experts: list[str]
    version: int = Field(description="the expert registry's version")
    config_version: int | None = Field(description="the stored config version, every replica's")
    generation: int
    replica: str
    source: str

    @classmethod
    def of(
        cls, done: Swapped, replica: str, experts: list[str], version: int, source: str
    ) -> ReloadPublic:
        return cls(
            pipelines=list(done.engine.pipelines),
            routers=sorted(done.engine.routers),
            experts=experts,
            version=version,
            config_version=done.config_version,
            generation=done.generation,
            replica=replica,
            source=source,
        )
