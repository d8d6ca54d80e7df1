"""`coe build ...`: routing artefacts from data (category map, skill profiles, instructions).

Beside these built-ins, a router plug-in brings its own builder: a `build_command` on its
class (a click command, or a function returning one) becomes `coe build NAME`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from coe.routing.data import load_models, load_outcomes

if TYPE_CHECKING:
    from coe.experts.schema import ExpertSpec


class BuildGroup(click.Group):
    """The built-in builders and every router plug-in's own, loaded once per invocation from
    the experts file's `routers_dirs` (COE_EXPERTS_FILE) and the `coe.routers` entry points."""

    def plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        meta = ctx.find_root().meta
        if "coe.build.plugins" not in meta:
            found: dict[str, click.Command] = {}
            for type_name, command in router_build_commands().items():
                if command.name in self.commands or command.name in found:
                    raise click.ClickException(
                        f"router type {type_name!r} brings `coe build {command.name}`, "
                        "which is already a command"
                    )
                found[str(command.name)] = command
            meta["coe.build.plugins"] = found
        plugins: dict[str, click.Command] = meta["coe.build.plugins"]
        return plugins

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self.plugin_commands(ctx).get(cmd_name)


def router_build_commands(experts_file: Path | None = None) -> dict[str, click.Command]:
    """type name -> the `coe build` command its router class declares (`build_command`)."""
    from coe.config import Settings
    from coe.errors import CoeError
    from coe.experts.schema import load_config
    from coe.routing.registry import RouterRegistry

    path = experts_file or Settings().experts_file
    dirs: list[str] = ["routers"]
    base = Path.cwd()
    if path.is_file():
        try:
            config = load_config(path)
        except CoeError:  # `coe check-config` reports it; the built-in builders still work
            pass
        else:
            dirs, base = list(config.routers_dirs), path.resolve().parent
    present = [d for d in dirs if (Path(d) if Path(d).is_absolute() else base / d).is_dir()]
    registry = RouterRegistry.load(present, base)
    commands: dict[str, click.Command] = {}
    for type_name in registry.names():
        declared = getattr(registry.get(type_name), "build_command", None)
        if declared is not None and not isinstance(declared, click.Command):
            declared = declared()
        if isinstance(declared, click.Command):
            commands[type_name] = declared
    return commands


build_group = BuildGroup("build", help="Build routing artefacts from labelled data.")

EXPERT_PROMPT = (
    "Write one sentence, starting with 'The task is', that describes the kind of request "
    "the following assistant is best at. Assistant: {description}"
)


def _write(text: str, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@build_group.command("category-map")
@click.option("--outcomes", "outcomes_path", required=True, type=click.Path(exists=True))
@click.option(
    "--models",
    "models_path",
    type=click.Path(exists=True),
    help="models.json with prices (for --budget)",
)
@click.option("--budget", type=float, help="only experts costing at most this per Mtok")
@click.option("--out", help="write the YAML `categories:` block here (default: stdout)")
@click.option("--scores-out", help="also write {category: {expert: mean score}} JSON here")
def category_map_cmd(
    outcomes_path: str,
    models_path: str | None,
    budget: float | None,
    out: str | None,
    scores_out: str | None,
) -> None:
    """Best expert per category (task) by validation score, as experts.yaml `categories:`."""
    from coe.eval.builders import category_map, category_scores

    rows = load_outcomes(outcomes_path)
    costs = None
    if models_path:
        costs = {m.name: m.cost for m in load_models(models_path).values()}
    if budget is not None and costs is None:
        raise click.BadParameter("--budget needs --models", param_hint="--budget")
    table = category_map(rows, costs, budget)
    _write(yaml.safe_dump({"categories": table}, sort_keys=True), out)
    if scores_out:
        _write(json.dumps(category_scores(rows), indent=1) + "\n", scores_out)


@build_group.command("profiles")
@click.option(
    "--outcomes",
    "outcomes_path",
    required=True,
    type=click.Path(exists=True),
    help="validation outcomes (LLMRouter format: query, task, scores)",
)
@click.option("--out", required=True, help="profiles JSON for the skills router")
@click.option("--vocab-size", default=200, show_default=True)
@click.option("--tag-top", default=3, show_default=True, help="skills per question")
@click.option("--limit", type=int, help="use only the first N questions")
@click.option("--encoder", help="local sentence-transformers folder")
def profiles_cmd(
    outcomes_path: str,
    out: str,
    vocab_size: int,
    tag_top: int,
    limit: int | None,
    encoder: str | None,
) -> None:
    """Symbolic-MoE expert profiles (+1/-1 per skill per expert) from validation outcomes."""
    from coe.eval.builders import build_profiles
    from coe.routing.encoders import EncoderCache

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = load_outcomes(outcomes_path)[:limit]
    doc = build_profiles(rows, EncoderCache(encoder), vocab_size=vocab_size, tag_top=tag_top)
    doc["source"] = {"outcomes": str(outcomes_path), "questions": len(rows)}
    _write(json.dumps(doc, separators=(",", ":")) + "\n", out)


@build_group.command("instructions")
@click.option("--config", "-c", "config_path", default="experts.yaml", show_default=True)
@click.option("--writer", help="expert that writes the instructions; none: use descriptions")
@click.option(
    "--models",
    "models_path",
    type=click.Path(exists=True),
    help="take descriptions from a models.json instead of experts.yaml",
)
@click.option("--out", required=True, help="JSON {expert: instruction}")
@click.option("--max-tokens", default=48, show_default=True)
def instructions_cmd(
    config_path: str, writer: str | None, models_path: str | None, out: str, max_tokens: int
) -> None:
    """GLIDER expert instructions, written once from each expert's description."""
    from coe.experts.schema import load_config

    config = load_config(config_path)
    if models_path:
        descriptions = {m.name: m.description for m in load_models(models_path).values()}
    else:
        descriptions = {e.name: e.description or e.name for e in config.experts}
    if writer is None:
        result = dict(descriptions)
    else:
        spec = config.expert(writer)
        if spec is None:
            raise click.BadParameter(f"unknown expert {writer!r}", param_hint="--writer")
        result = asyncio.run(_write_instructions(spec, descriptions, max_tokens))
    _write(json.dumps(result, indent=1) + "\n", out)


async def _write_instructions(
    writer: ExpertSpec, descriptions: dict[str, str], max_tokens: int
) -> dict[str, str]:
    """Each description through the writer expert, as any call to it goes: its model id,
    API key, defaults, replicas and retries (`coe.dispatch`)."""
    from coe.dispatch import ExpertClient

    out = {}
    async with ExpertClient.session() as client:
        for name, desc in descriptions.items():
            body: dict[str, Any] = {
                "max_tokens": max_tokens,
                "temperature": 0,
                "messages": [{"role": "user", "content": EXPERT_PROMPT.format(description=desc)}],
            }
            response = await client.complete(writer, body)
            text = " ".join(str(response["choices"][0]["message"]["content"] or "").split())
            out[name] = text or desc
    return out


@build_group.command("encoder")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="folder to write (default: the cache folder the `minilm-static` encoder loads)",
)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="sentence-transformers folder to distil (default: the packaged all-MiniLM-L6-v2)",
)
@click.option("--pca-dims", default=256, show_default=True, type=click.IntRange(8, 1024))
@click.option("--force", is_flag=True, help="build again even if the folder is there")
def encoder_cmd(out: Path | None, source: Path | None, pca_dims: int, force: bool) -> None:
    """Distil a static (model2vec) routing encoder from a local MiniLM, once."""
    import logging

    from coe.routing.encoder_build import build_static

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    click.echo(str(build_static(out, source, pca_dims, force)))
