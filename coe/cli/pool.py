"""`coe pool serve`: run the pool service of one device, the only owner of its pools' swaps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coe.cli.options import settings_from

if TYPE_CHECKING:
    from coe.experts.schema import CoeConfig


@click.group("pool")
def pool_group() -> None:
    """Pool services: one per device, next to its vLLM servers."""


@pool_group.command("serve")
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
@click.option("--host", help="bind address (COE_HOST)")
@click.option("--port", type=int, help="port (default: the port of the pools' `service` URL)")
@click.option(
    "--pool", "pools", multiple=True, help="a pool to serve; repeat for more (default: all)"
)
def serve(config: str | None, host: str | None, port: int | None, pools: tuple[str, ...]) -> None:
    """Run the pool service: its pools' controllers and scheduler, one OpenAI endpoint in
    front of their servers, and their state at /pool/state. SIGTERM stops it cleanly
    (servers the process controller started are stopped)."""
    import uvicorn

    from coe.experts.schema import load_config
    from coe.observability import configure_logging
    from coe.observability.metrics import checked_metrics_token
    from coe.pool_service import create_pool_app

    settings = settings_from(config=config, host=host)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    cfg = load_config(settings.experts_file)
    names = list(pools) or None
    base_dir = Path(os.path.abspath(settings.experts_file)).parent
    token = checked_metrics_token(settings)
    app = create_pool_app(cfg, names, base_dir=base_dir, metrics_token=token)
    uvicorn.run(
        app,
        host=settings.host,
        port=port or _service_port(cfg, names),
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.keep_alive_s,
        log_config=None,
    )


def _service_port(config: CoeConfig, names: list[str] | None) -> int:
    """The port the served pools' `service` URL names (they must agree)."""
    ports = {
        name: spec.service.port or (443 if spec.service.scheme == "https" else 80)
        for name, spec in config.pools.items()
        if names is None or name in names
    }
    if len(set(ports.values())) != 1:
        listed = ", ".join(f"{n} at {p}" for n, p in sorted(ports.items()))
        raise click.UsageError(
            f"the pools' service URLs name different ports ({listed}); pass --port"
        )
    return next(iter(ports.values()))
