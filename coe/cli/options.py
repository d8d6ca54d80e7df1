"""Options shared by the commands that run a gateway, and the settings they produce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from coe.config import Settings

F = TypeVar("F", bound=Callable[..., Any])


def gateway_options(func: F) -> F:
    """Options shared by the commands that run a gateway; each overrides a COE_* variable."""
    options = [
        click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)"),
        click.option("--redis-url", help="Redis URL (COE_REDIS_URL); unset: embedded store"),
        click.option("--host", help="bind address (COE_HOST)"),
        click.option("--port", type=int, help="port (COE_PORT)"),
        click.option("--dev", is_flag=True, help="dev mode: no admin token needed (COE_DEV_MODE)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from(**given: Any) -> Settings:
    """Settings from the environment, overridden by the options given on the command line."""
    names = {
        "config": "experts_file",
        "redis_url": "redis_url",
        "host": "host",
        "port": "port",
        "dev": "dev_mode",
    }
    overrides = {names[k]: v for k, v in given.items() if k in names and v}
    return Settings(**overrides)
