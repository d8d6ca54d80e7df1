"""`coe serve`, `coe up` and `coe prepare-model`: run the gateway, with or without local experts."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from coe.cli.options import gateway_options, settings_from
from coe.config import Settings


def _serve(settings: Settings, app: Any) -> None:
    import uvicorn

    from coe.observability import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        log_config=None,
    )


@click.command()
@gateway_options
@click.option(
    "--config-from-file",
    is_flag=True,
    help="serve this replica's experts.yaml and store it as every replica's routing config "
    "(default: the stored config wins when there is one)",
)
def serve(config_from_file: bool, **options: Any) -> None:
    """Run the gateway (the experts must already be running)."""
    from coe.experts.schema import load_config
    from coe.gateway import create_app

    settings = settings_from(**options)
    given = load_config(settings.experts_file) if config_from_file else None
    _serve(settings, create_app(settings, given))


@click.command()
@gateway_options
def up(**options: Any) -> None:
    """Start the local vLLM experts from the config, then the gateway; Ctrl-C stops all."""
    from coe.experts.schema import load_config
    from coe.gateway import create_app
    from coe.local.launcher import log_paths, servers_for, start_all, stop_all

    settings = settings_from(**options)
    settings.checked_admin_token()
    cfg = load_config(settings.experts_file)
    servers = servers_for(cfg.local_servers)
    if servers:
        click.echo(
            f"starting {len(servers)} local vLLM server(s); logs: "
            + ", ".join(str(p) for p in log_paths(servers)),
            err=True,
        )
        waited = asyncio.run(start_all(servers))
        click.echo("ready: " + ", ".join(f"{k} in {v:.0f} s" for k, v in waited.items()), err=True)
    base = f"http://{settings.host}:{settings.port}"
    click.echo(
        f"\ncoe is listening on {base} ({'redis' if settings.redis_url else 'embedded'} store)\n"
        f"  curl {base}/v1/models\n"
        f"  curl {base}/v1/chat/completions -H 'content-type: application/json' \\\n"
        f'    -d \'{{"model": "coe/auto", "messages": [{{"role": "user", '
        f'"content": "What is the capital of France?"}}], "max_tokens": 32}}\'\n'
        f'  python: OpenAI(base_url="{base}/v1", api_key="unused")\n',
        err=True,
    )
    try:
        _serve(settings, create_app(settings, cfg))
    finally:
        stop_all(servers)


@click.command("prepare-model")
@click.option(
    "--experts-file",
    envvar="COE_EXPERTS_FILE",
    default="experts.yaml",
    show_default=True,
    help="also build the routing encoder this config names, if it must be built",
)
def prepare_model(experts_file: str) -> None:
    """Convert the packaged SmolLM2 GGUF to a cached model folder, and build the configured
    static routing encoder (each once)."""
    from pathlib import Path

    from coe.experts.schema import load_config
    from coe.local.model import ensure_smollm2
    from coe.routing.encoder_backends import parse_spec
    from coe.routing.encoder_build import build_static

    click.echo(str(ensure_smollm2()))
    if Path(experts_file).is_file():
        spec = parse_spec(load_config(experts_file).encoder)
        if spec.kind == "static" and spec.path is None:
            click.echo("building the static routing encoder (once, about a minute)", err=True)
            click.echo(str(build_static()))
