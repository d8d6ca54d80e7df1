"""The schema of experts.yaml: experts, the category map, routers, pipelines, pools and servers.

Every model forbids unknown keys, so a typo fails at start-up with the file,
the key path and what is wrong, instead of being silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)

from coe.errors import CoeError, ConfigError
from coe.experts.encoder_names import check_name
from coe.security.egress import EgressPolicy

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertLimits(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # no `timeout_s: true`

    max_concurrency: int = Field(16, ge=1, le=4096)
    timeout_s: float = Field(120.0, gt=0, le=3600)
    connect_timeout_s: float = Field(5.0, gt=0, le=120)
    max_tokens: int | None = Field(None, ge=1)


class ExpertSpec(Strict):
    name: str = Field(pattern=NAME_RE)
    model: str = Field(min_length=1, description="model id the upstream server serves")
    endpoints: list[HttpUrl] = Field(min_length=1, description="OpenAI-compatible base URLs")
    description: str = ""
    skills: list[str] = Field(default_factory=list)
    system_prompt: str | None = None
    cost: float = Field(0.0, ge=0, description="price per million tokens")
    api_key: str | None = Field(None, repr=False)
    limits: ExpertLimits = ExpertLimits()
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="request parameters used when the client sets none"
    )
    pool: str | None = Field(None, description="the pool (shared device) this expert lives in")

    def base_urls(self) -> list[str]:
        return [str(u).rstrip("/") for u in self.endpoints]


class RouterSpec(Strict):
    type: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class DynamicK(Strict):
    tau: float = Field(0.4, gt=0, le=1)
    max_k: int = Field(3, ge=1, le=16)


class AggregationSpec(Strict):
    """How the answers of k > 1 experts become one (docs/aggregation.md)."""

    strategy: str = Field(
        "synthesize",
        min_length=1,
        description="an aggregation strategy plug-in: synthesize, vote, first, best, or a "
        "third party's (checked when the engine is built and by `coe check-config`)",
    )
    aggregator: str | None = Field(
        None, description="fixed aggregator / judge; a router's details['aggregator'] wins"
    )
    deadline_s: float = Field(
        60.0, gt=0, le=3600, description="bounds the fan-out; experts still running are cut"
    )
    keepalive_s: float = Field(
        5.0, gt=0, le=300, description="SSE keep-alive comment interval while a stream waits"
    )
    skip_if_agree: bool = Field(True, description="no aggregator call when final answers agree")
    answer_format: Literal["auto", "choice", "number", "text"] = Field(
        "auto", description="what final answers look like, for agreement and voting"
    )


class PipelineSpec(Strict):
    routers: list[str] = Field(
        min_length=1, description="tried in order until one does not abstain"
    )
    k: int = Field(1, ge=1, le=16)
    dynamic_k: DynamicK | None = None
    aggregation: AggregationSpec = AggregationSpec()
    description: str = ""


class PoolSpec(Strict):
    """Experts sharing one device, C of them resident at once (docs/pools.md).

    A pool belongs to its device: one pool service (`coe pool serve`) runs it next to its
    vLLM servers, and every gateway and worker sends the pool's experts there (`service`,
    which each member expert's `endpoints` must name). `controller` names a swap controller
    plug-in; its `params` are checked by the controller's own `Params` model.
    """

    service: HttpUrl = Field(description="base URL of the pool service that runs this pool")
    state_ttl_s: float = Field(
        1.0, gt=0, le=60, description="how long gateways trust the service's published state"
    )
    batch_linger_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="an expert serving batch work stays resident this long after its last "
        "batch call while only batch work waits, so workers do not make it alternate",
    )
    controller: str = Field("static", min_length=1, description="swap controller kind")
    capacity: int = Field(1, ge=1, le=256, description="experts resident at once (C)")
    max_wait_s: float = Field(
        30.0, gt=0, le=3600, description="waiting longer than this forces a swap (no starvation)"
    )
    retry_after_s: float = Field(
        30.0, ge=0, le=3600, description="an expert whose swap failed is skipped this long"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="controller parameters (docs/pools.md)"
    )

    @property
    def service_url(self) -> str:
        return str(self.service).rstrip("/")


class LocalServer(Strict):
    """A vLLM server on this machine: one `coe up` starts before the gateway, or one the
    `process` swap controller starts when its expert is swapped in."""

    name: str | None = Field(
        None, pattern=NAME_RE, description="names its log file (default: served_model_name)"
    )
    model: str = Field("builtin:smollm2-135m-instruct", description="builtin:NAME or a folder")
    served_model_name: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    cpu_core: int | None = Field(None, ge=0)
    args: list[str] = Field(default_factory=list, description="extra vLLM flags")
    start_timeout_s: float = Field(400.0, gt=0, le=3600, description="longer is a failed start")

    @property
    def log_name(self) -> str:
        return self.name or self.served_model_name


class CoeConfig(Strict):
    experts: list[ExpertSpec] = Field(min_length=1)
    local_servers: list[LocalServer] = Field(default_factory=list)
    default_expert: str
    categories: dict[str, list[str]] = Field(default_factory=dict)
    routers: dict[str, RouterSpec] = Field(default_factory=dict)
    pipelines: dict[str, PipelineSpec] = Field(default_factory=dict)
    default_pipeline: str = "auto"
    encoder: str | None = Field(
        None,
        description="routing encoder of routers that name none: minilm (sentence-transformers), "
        "minilm-int8 (int8 ONNX), minilm-static (model2vec, `coe build encoder`), KIND:PATH, "
        "or a sentence-transformers folder; default minilm",
    )
    pools: dict[str, PoolSpec] = Field(
        default_factory=dict, description="experts sharing a device, C resident at once"
    )
    routers_dirs: list[str] = Field(
        default_factory=lambda: ["routers"],
        description="folders of router plug-ins, relative to this file; later ones may add types",
    )
    controllers_dirs: list[str] = Field(
        default_factory=list,
        description="folders of swap controller plug-ins, relative to this file",
    )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_name(value)
            except CoeError as err:
                raise ValueError(err.message) from None
        return value

    @model_validator(mode="after")
    def _check_references(self) -> CoeConfig:
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate expert names: {', '.join(dupes)}")
        known = set(names)
        if self.default_expert not in known:
            raise ValueError(f"default_expert {self.default_expert!r} is not a listed expert")
        for cat, experts in self.categories.items():
            missing = [e for e in experts if e not in known]
            if missing:
                raise ValueError(f"categories.{cat} names unknown experts: {', '.join(missing)}")
        for pname, pipe in self.pipelines.items():
            if not re.match(NAME_RE, pname):
                raise ValueError(f"pipeline name {pname!r} is not a valid name")
            for r in pipe.routers:
                if r not in self.routers and r != "default":
                    raise ValueError(f"pipelines.{pname}.routers names unknown router {r!r}")
            agg = pipe.aggregation.aggregator
            if agg is not None and agg not in known:
                raise ValueError(f"pipelines.{pname}.aggregation.aggregator {agg!r} is unknown")
        for e in self.experts:
            if e.pool is None:
                continue
            pool = self.pools.get(e.pool)
            if pool is None:
                raise ValueError(f"expert {e.name} names unknown pool {e.pool!r}")
            service = pool.service_url
            if e.base_urls() != [service]:
                raise ValueError(
                    f"expert {e.name} is in pool {e.pool}, served at {service}; "
                    f"its endpoints must be [{service}], not {e.base_urls()}"
                )
        if self.pipelines and self.default_pipeline not in self.pipelines:
            raise ValueError(f"default_pipeline {self.default_pipeline!r} is not a pipeline")
        return self

    def expert(self, name: str) -> ExpertSpec | None:
        return next((e for e in self.experts if e.name == name), None)


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: Path | str = "<config>") -> CoeConfig:
    path = Path(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    try:
        return CoeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(path, err)) from None


def load_config(path: Path | str, egress: EgressPolicy | None = None) -> CoeConfig:
    """Read and validate experts.yaml; every failure is a ConfigError naming the file.

    Expert endpoints must pass the egress policy (`egress`; default: the COE_EGRESS_*
    settings of the environment). Resolves host names: blocking, call it from a thread.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    config = parse_config(data, path)
    policy = egress or EgressPolicy.from_settings()
    owners = {url: (i, e.name) for i, e in enumerate(config.experts) for url in e.base_urls()}
    refused = policy.first_refused(owners)
    if refused is not None:
        i, name = owners[refused[0]]
        raise ConfigError(f"{path}: experts.{i}.endpoints ({name}): {refused[1]}")
    return config
