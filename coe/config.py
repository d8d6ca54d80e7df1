"""Process settings from the environment (COE_*); the experts live in experts.yaml."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COE_", env_file=None, extra="ignore")

    experts_file: Path = Path("experts.yaml")
    redis_url: str | None = Field(None, description="unset: the embedded in-process store")
    store_prefix: str = "coe:"
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(512, ge=1)
    request_timeout_s: float = Field(300.0, gt=0)
    log_level: str = "INFO"
