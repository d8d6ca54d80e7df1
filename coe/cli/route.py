"""`coe check-config` and `coe route`: validate experts.yaml, show a routing decision."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from coe.cli.options import settings_from
from coe.config import Settings


@click.command("check-config")
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
def check_config(config: str | None) -> None:
    """Validate experts.yaml, then load every router and swap-controller plug-in it names and
    check their params (nothing is started)."""
    from coe.experts.schema import load_config
    from coe.runtime import check_plugins

    path = Path(config or Settings().experts_file)
    cfg = load_config(path)
    for line in check_plugins(cfg, path.resolve().parent):
        click.echo(f"  {line}")
    click.echo(f"{path}: ok ({len(cfg.experts)} experts, {len(cfg.pipelines)} pipelines)")


@click.command()
@click.argument("query")
@click.option("--model", default="coe/auto", show_default=True)
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
def route(query: str, model: str, config: str | None) -> None:
    """Print the routing decision for QUERY without generating."""
    from coe.runtime import build_runtime

    async def run() -> dict[str, Any]:
        runtime = await build_runtime(settings_from(config=config), serve_admin=False)
        try:
            engine = runtime.engine
            decision = await engine.decide(engine.resolve(model), query)
            return decision.to_dict()
        finally:
            await runtime.close()

    click.echo(json.dumps(asyncio.run(run()), indent=2))
