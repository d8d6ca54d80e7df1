"""The `coe` command: serve the gateway, start local experts, route, evaluate."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from coe.config import Settings
from coe.errors import CoeError

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


def _settings(**given: Any) -> Settings:
    names = {
        "config": "experts_file",
        "redis_url": "redis_url",
        "host": "host",
        "port": "port",
        "dev": "dev_mode",
    }
    overrides = {names[k]: v for k, v in given.items() if k in names and v}
    return Settings(**overrides)


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


@click.group()
def main() -> None:
    """coe: a composition-of-experts gateway."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@main.command()
@gateway_options
def serve(**options: Any) -> None:
    """Run the gateway (the experts must already be running)."""
    from coe.gateway import create_app

    settings = _settings(**options)
    _serve(settings, create_app(settings))


@main.command()
@gateway_options
def up(**options: Any) -> None:
    """Start the local vLLM experts from the config, then the gateway; Ctrl-C stops all."""
    from coe.experts.schema import load_config
    from coe.gateway import create_app
    from coe.local.launcher import log_paths, servers_for, start_all, stop_all

    settings = _settings(**options)
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


@main.command("prepare-model")
def prepare_model() -> None:
    """Convert the packaged SmolLM2 GGUF to a cached model folder (once)."""
    from coe.local.model import ensure_smollm2

    click.echo(str(ensure_smollm2()))


@main.command("check-config")
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
def check_config(config: str | None) -> None:
    """Validate experts.yaml and load every router plug-in it names."""
    from coe.experts.schema import load_config

    path = Path(config or Settings().experts_file)
    cfg = load_config(path)
    click.echo(f"{path}: ok ({len(cfg.experts)} experts, {len(cfg.pipelines)} pipelines)")


@main.command()
@click.argument("query")
@click.option("--model", default="coe/auto", show_default=True)
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
def route(query: str, model: str, config: str | None) -> None:
    """Print the routing decision for QUERY without generating."""
    from coe.gateway.services import build_services

    async def run() -> dict[str, Any]:
        services = await build_services(_settings(config=config), serve_admin=False)
        try:
            engine = services.engine
            decision = await engine.decide(engine.resolve(model), query)
            return decision.to_dict()
        finally:
            await services.close()

    click.echo(json.dumps(asyncio.run(run()), indent=2))


def _add_batch_commands() -> None:
    from coe.batch.cli import batch_group, worker_command
    from coe.deploy.cli import deploy_group

    main.add_command(batch_group)
    main.add_command(worker_command)
    main.add_command(deploy_group)


def _add_optional_groups() -> None:
    """Evaluation and artefact commands come with the embedding extra."""
    try:
        from coe.eval.cli import eval_group
        from coe.routing.build_cli import build_group
    except ImportError:
        return
    main.add_command(eval_group)
    main.add_command(build_group)


def run() -> None:
    _add_batch_commands()
    _add_optional_groups()
    try:
        main(standalone_mode=False)
    except CoeError as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)


if __name__ == "__main__":
    run()
