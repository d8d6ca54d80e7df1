"""`coe deploy ...`: check docker-compose.yml against the experts files, or generate it."""

from __future__ import annotations

import os

import click
import yaml

DEFAULT_COMPOSE = "docker-compose.yml"
DEFAULT_CONFIGS = ("services/experts.compose.yaml", "services/experts.compose-gpu.yaml")

deploy_group = click.Group("deploy", help="Deployment files: docker compose.")


@deploy_group.command("check-compose")
@click.option(
    "--compose",
    "compose_path",
    default=DEFAULT_COMPOSE,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="the compose file",
)
@click.option(
    "--config",
    "-c",
    "configs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help=f"a compose-flavoured experts file (repeatable) [default: {', '.join(DEFAULT_CONFIGS)}]",
)
def check_compose_command(compose_path: str, configs: tuple[str, ...]) -> None:
    """Exit non-zero, listing each mismatch, when the experts files and compose disagree,
    or when the gateway would be published on every interface without API keys or a
    metrics token (variables are read from this shell, as compose reads them)."""
    from coe.deploy.compose import check_files
    from coe.deploy.services import load_compose

    paths = configs or DEFAULT_CONFIGS
    problems = check_files(paths, load_compose(compose_path), dict(os.environ))
    if problems:
        for problem in problems:
            click.echo(f"mismatch: {problem}", err=True)
        raise click.ClickException(
            f"{compose_path} and {', '.join(paths)} disagree ({len(problems)} mismatch"
            f"{'es' if len(problems) != 1 else ''})"
        )
    click.echo(f"{compose_path}: ok against {', '.join(paths)}")


@deploy_group.command("compose-experts")
@click.option(
    "--config",
    "-c",
    "config_path",
    default=DEFAULT_CONFIGS[0],
    show_default=True,
    type=click.Path(dir_okay=False),
    help="a compose-flavoured experts file",
)
@click.option("--flavour", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
def compose_experts_command(config_path: str, flavour: str) -> None:
    """Print the compose `services:` entries for the vLLM servers and pool services the
    config points at."""
    from coe.deploy.generate import expert_services
    from coe.experts.schema import load_config

    block = {"services": expert_services(load_config(config_path), flavour)}
    click.echo(yaml.safe_dump(block, sort_keys=False, width=100), nl=False)
