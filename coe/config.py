"""Process settings from the environment (COE_*); the experts live in experts.yaml.

Nothing else in coe reads COE_* variables: code with no `Settings` at hand (encoders, the
evaluation cache, the local model) asks `machine_settings()`, the part `Settings` builds on."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coe.errors import ConfigError
from coe.security.tokens import MIN_TOKEN_LENGTH, STRONG_HINT, is_weak


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "coe"


class MachineSettings(BaseSettings):
    """This machine's caches and threads: what code deep below a process reads without a
    `Settings` passed down (`machine_settings()`); `Settings` holds the same fields."""

    model_config = SettingsConfigDict(env_prefix="COE_", env_file=None, extra="ignore")

    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="built artefacts, models and caches, outside the repository",
    )
    onnx_threads: int = Field(1, description="onnxruntime threads per call of the int8 encoder")

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return default_cache_dir() if value in ("", None) else value


def machine_settings() -> MachineSettings:
    """The machine part of the settings, read from the environment now."""
    return MachineSettings()


class Settings(MachineSettings):
    experts_file: Path = Path("experts.yaml")
    redis_url: str | None = Field(None, description="unset: the embedded in-process store")
    store_prefix: str = "coe:"
    host: str = "127.0.0.1"
    port: int = 8000

    admin_token: SecretStr | None = None
    dev_mode: bool = Field(False, description="allow a missing admin token (one is generated)")
    require_api_key: bool = False
    egress_allow: str = Field(
        "",
        description="comma-separated CIDRs and host names expert endpoints may use even where "
        "refused by default (link-local, cloud metadata); docs/configuration.md",
    )
    egress_deny: str = Field(
        "",
        description="comma-separated CIDRs and host names expert endpoints may never use; "
        "wins over egress_allow",
    )
    egress_resolve_timeout_s: float = Field(
        2.0, gt=0, le=30, description="how long the egress check waits for a host name to resolve"
    )
    default_rate_limit_rpm: int = Field(600, ge=1)

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(512, ge=1)
    max_tokens_limit: int = Field(32768, ge=1)
    body_timeout_s: float = Field(30.0, gt=0, description="slow clients: whole body within this")
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    max_in_flight: int = Field(
        256,
        ge=1,
        description="chat and route requests one gateway serves at once; more get 503 "
        "server_overloaded with Retry-After at once instead of queueing without bound",
    )
    keep_alive_s: int = Field(30, ge=1)
    request_timeout_s: float = Field(300.0, gt=0)
    registry_poll_s: float = Field(5.0, gt=0, description="safety net beside pub/sub notices")
    encoder_max_queue: int = Field(
        512,
        ge=1,
        description="texts waiting for the routing encoder before routers that need it "
        "abstain to the next router of their pipeline (overload sheds routing, not requests)",
    )
    encoder_cache_size: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="recent queries whose vectors the routing encoder remembers (0: none)",
    )
    store_socket_timeout_s: float = Field(
        1.0, gt=0, description="Redis: longest wait for one reply (blocking reads add theirs)"
    )
    store_connect_timeout_s: float = Field(1.0, gt=0, description="Redis: longest connect")
    store_breaker_failures: int = Field(
        3, ge=1, description="Redis: consecutive failures/timeouts that make calls fail fast"
    )
    store_breaker_cool_down_s: float = Field(
        2.0, gt=0, description="Redis: fail fast this long, then let one probe through"
    )
    api_key_cache_size: int = Field(
        10_000, ge=1, description="API keys kept locally for store outages (least recent out)"
    )
    api_key_wipe_grace_s: float = Field(
        900.0, ge=0, description="known keys keep working this long after the key store empties"
    )

    batch_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    batch_max_lines: int = Field(50_000, ge=1)
    batch_chunk: int = Field(64, ge=1, le=10_000, description="items per route work unit")
    batch_claim_idle_s: float = Field(30.0, gt=0, description="reclaim units idle this long")
    batch_max_deliveries: int = Field(
        3, ge=1, le=100, description="a unit tried this often without success is given up"
    )
    batch_sweep_every_s: float | None = Field(
        None, gt=0, description="how often a worker looks for stalled jobs (default: claim idle)"
    )
    batch_retention_s: float = Field(
        30 * 24 * 3600, gt=0, description="finished batches, their files and uploads expire"
    )
    batch_worker: bool | None = Field(
        None, description="run a batch worker inside the gateway; unset: only without Redis"
    )

    log_level: str = "INFO"
    log_json: bool = False
    metrics_token: SecretStr | None = Field(
        None,
        description="scrapers of /metrics (gateway, worker, pool service) send it as "
        "`Authorization: Bearer <token>`; unset: /metrics is open",
    )

    def checked_admin_token(self) -> str | None:
        """The admin token, refusing empty or placeholder values outside dev mode."""
        token = self.admin_token.get_secret_value() if self.admin_token else ""
        if is_weak(token) and not self.dev_mode:
            raise ConfigError(
                "COE_ADMIN_TOKEN is empty, a placeholder or shorter than "
                f"{MIN_TOKEN_LENGTH} characters; {STRONG_HINT} "
                "or run in dev mode (COE_DEV_MODE=1 / --dev)"
            )
        return token or None
