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
import yaml

from coe.config import Settings

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


FINISHED = ("completed", "expired", "cancelled")


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
        if job["status"] not in FINISHED:
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


def _check_status(r: httpx.Response) -> None:
    if r.status_code >= 400:
        _check(r)


@batch_group.command("run")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="where the output lines go (a path or URI)")
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process, embedded store; ray: a Ray cluster (Ray Data)",
)
@click.option("--workers", default=2, show_default=True, help="local: concurrent work units")
@click.option("--address", help="ray: the cluster (ray://head:10001 or auto); default local Ray")
@click.option("--num-cpus", type=int, help="ray: CPUs of a local Ray")
@click.option("--route-actors", default=2, show_default=True, help="ray: routing actors (max)")
@click.option("--answer-actors", default=2, show_default=True, help="ray: actors per expert group")
@click.option("--in-flight", default=16, show_default=True, help="ray: requests per actor")
@click.option(
    "--experts-at-once",
    default=1,
    show_default=True,
    help="ray: expert groups answered together (1: one after another, each model loaded once)",
)
@click.option("--max-retries", default=3, show_default=True, help="ray: restarts of a dead actor")
@click.option(
    "--generate",
    type=click.Choice(["http", "vllm"]),
    default="http",
    show_default=True,
    help="ray: http calls the experts' endpoints; vllm generates experts that have an engine "
    "model in the job with Ray Data LLM's vLLM engine on GPU nodes",
)
@click.option(
    "--engine-models",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ray, --generate vllm: YAML of expert: {model: FOLDER, adapter: FOLDER, "
    "engine_kwargs: {...}, replicas: N} (experts served by local_servers need none)",
)
def run(
    inputs: tuple[str, ...],
    output: str,
    config: str | None,
    engine: str,
    workers: int,
    address: str | None,
    num_cpus: int | None,
    route_actors: int,
    answer_actors: int,
    in_flight: int,
    experts_at_once: int,
    max_retries: int,
    generate: str,
    engine_models: Path | None,
) -> None:
    """Route and answer INPUTS (OpenAI batch JSONL; with --engine ray also Parquet, folders
    and shared-storage URIs); one output line per input line, in input order.

    The local engine runs here on the embedded store; the Ray engine runs on a Ray cluster
    and uses COE_REDIS_URL when set (registered experts, the stored routing config)."""
    overrides: dict[str, Any] = {"batch_worker": False}
    if config:
        overrides["experts_file"] = Path(config)
    if engine == "ray":
        models = yaml.safe_load(engine_models.read_text()) if engine_models else {}
        if not isinstance(models, dict):
            raise click.ClickException(f"{engine_models}: expected a mapping of expert names")
        options = {
            "address": address,
            "num_cpus": num_cpus,
            "route_actors": route_actors,
            "answer_actors": answer_actors,
            "in_flight": in_flight,
            "experts_at_once": experts_at_once,
            "max_retries": max_retries,
            "generate": generate,
            "engine_models": models,
        }
        counts = _run_ray(Settings(**overrides), inputs, output, options)
        click.echo(json.dumps(counts), err=True)
        return
    if len(inputs) != 1 or not Path(inputs[0]).is_file():
        raise click.ClickException(
            "the local engine takes one JSONL file (--engine ray takes more)"
        )
    settings = Settings(redis_url=None, **overrides)
    counts = asyncio.run(_run_local(settings, Path(inputs[0]), Path(output), workers))
    click.echo(json.dumps(counts), err=True)


def _run_ray(
    settings: Settings, inputs: tuple[str, ...], output: str, given: dict[str, Any]
) -> dict[str, Any]:
    try:
        import ray  # noqa: F401 - only to say what is missing
    except ImportError as err:
        raise click.ClickException(
            f"--engine ray needs the ray extra (pip install 'coe[ray]'): {err}"
        ) from None
    from coe.batch.on_ray import RayOptions, run_on_ray
    from coe.errors import CoeError
    from coe.experts.schema import load_config

    # the actors see this process's coe settings (and offline-model switches), wherever they run
    env = {k: v for k, v in os.environ.items() if k.startswith(("COE_", "HF_", "TOKENIZERS_"))}
    options = RayOptions(env=env, **given)
    try:
        config = load_config(Path(settings.experts_file))
        summary = run_on_ray(list(inputs), output, settings, config, options)
    except CoeError as err:
        raise click.ClickException(err.message) from None
    return summary.to_dict()


async def _run_local(settings: Settings, file: Path, output: Path, workers: int) -> dict[str, int]:
    from coe.batch import decode_upload
    from coe.runtime import build_runtime
    from coe.supervisor import batch_worker

    runtime = await build_runtime(settings, serve_admin=False)
    jobs = runtime.batch_jobs
    try:
        content = await asyncio.to_thread(file.read_bytes)
        text = await asyncio.to_thread(
            decode_upload, content, settings.batch_max_bytes, settings.batch_max_lines
        )
        uploaded = await jobs.files.create(text, len(content), file.name)
        job = await jobs.create(uploaded["id"])
        if job["status"] == "failed":
            raise click.ClickException(job["errors"]["data"][0]["message"])
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(batch_worker(runtime, f"local-{i}").run(stop))
            for i in range(workers)
        ]
        total = job["request_counts"]["total"]
        with click.progressbar(length=total, label=f"{file.name}", file=sys.stderr) as bar:
            done = 0
            while job["status"] not in FINISHED:
                await asyncio.sleep(0.2)
                job = await jobs.retrieve(job["id"])
                counts = job["request_counts"]
                now = counts["completed"] + counts["failed"]
                bar.update(now - done)
                done = now
        stop.set()
        await asyncio.gather(*tasks)
        out_lines = [json.dumps(line, ensure_ascii=False) async for line in jobs.results(job["id"])]
        await asyncio.to_thread(output.write_text, "\n".join(out_lines) + "\n")
        final: dict[str, int] = job["request_counts"]
        return final
    finally:
        await runtime.close()


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
