"""The `coe` command: serve the gateway, start local experts, route, batch, deploy, evaluate.

One module per family of commands; this one holds the root group and the console script.
"""

from __future__ import annotations

import os
import sys

import click

from coe.cli.batch import batch_group, worker_command
from coe.cli.deploy import deploy_group
from coe.cli.pool import pool_group
from coe.cli.route import check_config, route
from coe.cli.serve import prepare_model, serve, up
from coe.errors import CoeError


@click.group()
def main() -> None:
    """coe: a composition-of-experts gateway."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _optional_groups() -> list[click.Command]:
    """Evaluation and artefact commands come with the embedding extra."""
    try:
        from coe.cli.build import build_group
        from coe.cli.eval import eval_group
    except ImportError:
        return []
    return [eval_group, build_group]


for _command in (
    serve,
    up,
    prepare_model,
    check_config,
    route,
    batch_group,
    worker_command,
    deploy_group,
    pool_group,
    *_optional_groups(),
):
    main.add_command(_command)


def run() -> None:
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
