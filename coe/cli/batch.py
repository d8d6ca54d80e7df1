"""`coe batch ...` and `coe worker`: batch jobs from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click
import httpx
from pydantic import ValidationError

from coe.config import Settings
from coe.errors import CoeError

DEFAULT_URL = "http://127.0.0.1:8000"
url_option = click.option(
    "--url", default=DEFAULT_URL, show_default=True, envvar="COE_URL", help="the gateway"
)
key_option = click.option("--api-key", envvar="COE_API_KEY", help="chat API key, if required")


def _client(url: str, api_key: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=120)


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text
        raise click.ClickException(f"{r.status_code}: {message}")
    return r.json()


@click.group("batch")
def batch_group() -> None:
    """Route and answer JSONL files of chat requests (OpenAI batch format)."""


@batch_group.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--metadata", "-m", multiple=True, help="KEY=VALUE kept with the batch")
@url_option
@key_option
def submit(file: Path, metadata: tuple[str, ...], url: str, api_key: str | None) -> None:
    """Upload FILE (POST /v1/files) and create a batch over it; prints the batch."""
    meta = dict(pair.partition("=")[::2] for pair in metadata) or None
    with _client(url, api_key) as c, file.open("rb") as fh:
        upload = {"file": (file.name, fh, "application/jsonl")}
        uploaded = _check(c.post("/v1/files", files=upload, data={"purpose": "batch"}))
        params = {
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": meta,
        }
        job = _check(c.post("/v1/batches", json=params))
    click.echo(json.dumps(job, indent=2))


@batch_group.command("status")
@click.argument("batch_id")
@url_option
@key_option
def status(batch_id: str, url: str, api_key: str | None) -> None:
    with _client(url, api_key) as c:
        click.echo(json.dumps(_check(c.get(f"/v1/batches/{batch_id}")), indent=2))


@batch_group.command("cancel")
@click.argument("batch_id")
@url_option
@key_option
def cancel(batch_id: str, url: str, api_key: str | None) -> None:
    with _client(url, api_key) as c:
        click.echo(json.dumps(_check(c.post(f"/v1/batches/{batch_id}/cancel")), indent=2))


@batch_group.command("results")
@click.argument("batch_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    help="where failed lines go (default: OUTPUT with .errors.jsonl; stdout without -o)",
)
@url_option
@key_option
def results(
    batch_id: str, output: Path | None, errors: Path | None, url: str, api_key: str | None
) -> None:
    """Write a finished batch's output file to OUTPUT (or stdout) and its error file beside."""
    with _client(url, api_key) as c:
        job = _check(c.get(f"/v1/batches/{batch_id}"))
        if job["status"] == "failed":
            problems = "; ".join(e["message"] for e in job["errors"]["data"])
            raise click.ClickException(f"batch {batch_id} failed: {problems}")
        if job["status"] not in finished():
            counts = job["request_counts"]
            raise click.ClickException(
                f"batch {batch_id} is {job['status']} "
                f"({counts['completed'] + counts['failed']}/{counts['total']} lines answered); "
                "its files are written once it is completed, expired or cancelled"
            )
        texts = {}
        for field in ("output_file_id", "error_file_id"):
            file_id = job[field]
            if file_id:
                r = c.get(f"/v1/files/{file_id}/content")
                _check_status(r)
                texts[field] = r.text
            else:
                texts[field] = ""
    if output is None and errors is None:
        sys.stdout.write(texts["output_file_id"] + texts["error_file_id"])
        return
    if output is not None:
        output.write_text(texts["output_file_id"])
        errors = errors or output.with_suffix(".errors.jsonl")
    if errors is not None and texts["error_file_id"]:
        errors.write_text(texts["error_file_id"])
    counts = job["request_counts"]
    click.echo(
        f"{counts['completed']} answers to {output}, {counts['failed']} errors to {errors}",
        err=True,
    )


def finished() -> frozenset[str]:
    """Statuses of a batch whose files `results` can write."""
    from coe.batch.status import TERMINAL, JobStatus

    return TERMINAL - {JobStatus.FAILED}


def _check_status(r: httpx.Response) -> None:
    if r.status_code >= 400:
        _check(r)


class _EngineRun(click.Command):
    """`batch run`, whose `--engine` choices and per-engine options come from the batch-engine
    registry when the command is first parsed or shown (not when `coe` is imported)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._with_engines = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._with_engines:
            from coe.batch.engines import batch_engines
            from coe.cli.engine_options import engine_params

            self._with_engines = True
            self.params.extend(engine_params(batch_engines()))
        return super().get_params(ctx)


@batch_group.command("run", cls=_EngineRun)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="where the output lines go (a path or URI)")
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
def run(
    inputs: tuple[str, ...], output: str, config: str | None, engine: str, **given: Any
) -> None:
    """Route and answer INPUTS (OpenAI batch JSONL; with --engine ray also Parquet, folders
    and shared-storage URIs); one output line per input line, in input order.

    The local engine runs here on the embedded store; the Ray engine runs on a Ray cluster
    and uses COE_REDIS_URL when set (registered experts, the stored routing config)."""
    overrides: dict[str, Any] = {"batch_worker": False}
    if config:
        overrides["experts_file"] = Path(config)
    from coe.batch.engines import batch_engines

    cls = batch_engines().get(engine)
    try:
        options = cls.Options.model_validate({k: given[k] for k in cls.Options.model_fields})
        settings = Settings(**{**cls.settings_overrides, **overrides})
        counts = cls().run(inputs, output, settings, None, options)
    except CoeError as err:
        raise click.ClickException(err.message) from None
    except ValidationError as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(counts), err=True)


@click.command("worker")
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
@click.option("--redis-url", help="Redis URL (COE_REDIS_URL)")
@click.option("--name", help="consumer name (default: host-pid)")
@click.option("--concurrency", default=1, show_default=True, help="units processed at once")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="serve this worker's Prometheus metrics (lines, expert calls) on this port; "
    "with COE_METRICS_TOKEN set, scrapers must send it as a bearer token",
)
def worker_command(
    config: str | None,
    redis_url: str | None,
    name: str | None,
    concurrency: int,
    metrics_port: int | None,
) -> None:
    """Process batch jobs from Redis until SIGTERM / Ctrl-C."""
    from coe.observability import configure_logging

    overrides: dict[str, Any] = {}
    if config:
        overrides["experts_file"] = Path(config)
    if redis_url:
        overrides["redis_url"] = redis_url
    settings = Settings(**overrides)
    if not settings.redis_url:
        raise click.ClickException(
            "coe worker needs Redis (COE_REDIS_URL or --redis-url); "
            "for one machine without Redis use `coe batch run`"
        )
    configure_logging(settings.log_level, json_lines=settings.log_json)
    from coe.observability.metrics import checked_metrics_token

    token = checked_metrics_token(settings)  # a weak token stops the worker before it starts
    asyncio.run(_work(settings, name, concurrency, metrics_port, token))


async def _work(
    settings: Settings,
    name: str | None,
    concurrency: int,
    metrics_port: int | None,
    metrics_token: str | None,
) -> None:
    from coe.observability import Metrics
    from coe.runtime import build_runtime
    from coe.supervisor import Supervisor, batch_worker, export_batch_lines, follow_changes

    metrics = Metrics(gateway=False)  # exports only what a worker moves
    runtime = await build_runtime(settings, serve_admin=False, metrics=metrics)
    loops = Supervisor()
    follow_changes(loops, runtime)  # experts registered and configs reloaded after it started
    if metrics_port is not None:
        export_batch_lines(loops, runtime)  # coe_batch_job_lines, as the gateway's
        runtime.metrics.serve(metrics_port, settings.host, metrics_token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    try:
        await asyncio.gather(
            *(
                batch_worker(runtime, base if concurrency == 1 else f"{base}-{i}").run(stop)
                for i in range(concurrency)
            )
        )
    finally:
        await loops.close()
        await runtime.close()
