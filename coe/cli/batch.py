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
@url_option
@key_option
def submit(file: Path, url: str, api_key: str | None) -> None:
    """Upload FILE to the gateway; prints the job."""
    with _client(url, api_key) as c, file.open("rb") as fh:
        job = _check(c.post("/v1/batches", files={"file": (file.name, fh, "application/jsonl")}))
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
@url_option
@key_option
def results(batch_id: str, output: Path | None, url: str, api_key: str | None) -> None:
    """Write the job's result lines (JSONL) to OUTPUT or stdout."""
    with _client(url, api_key) as c:
        r = c.get(f"/v1/batches/{batch_id}/results")
        if r.status_code >= 400:
            _check(r)
        if output:
            output.write_text(r.text)
            click.echo(f"{len(r.text.splitlines())} results written to {output}", err=True)
        else:
            sys.stdout.write(r.text)


@batch_group.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "-c", help="experts.yaml path (COE_EXPERTS_FILE)")
@click.option("--workers", default=2, show_default=True, help="concurrent work units")
def run(file: Path, output: Path, config: str | None, workers: int) -> None:
    """Route and answer FILE in this process (embedded store); results to OUTPUT."""
    overrides: dict[str, Any] = {"redis_url": None, "batch_worker": False}
    if config:
        overrides["experts_file"] = Path(config)
    settings = Settings(**overrides)
    counts = asyncio.run(_run_local(settings, file, output, workers))
    click.echo(json.dumps(counts), err=True)


async def _run_local(settings: Settings, file: Path, output: Path, workers: int) -> dict[str, int]:
    from coe.batch import BatchWorker, parse_batch_file
    from coe.runtime import build_runtime

    runtime = await build_runtime(settings, serve_admin=False)
    try:
        content = await asyncio.to_thread(file.read_bytes)
        lines = parse_batch_file(content, settings.batch_max_bytes, settings.batch_max_lines)
        job = await runtime.batch_jobs.create(lines, source=file.name)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                BatchWorker(runtime.batch_jobs.work, lambda: runtime.engine, name=f"local-{i}").run(
                    stop
                )
            )
            for i in range(workers)
        ]
        total = job["request_counts"]["total"]
        with click.progressbar(length=total, label=f"{file.name}", file=sys.stderr) as bar:
            done = 0
            while done < total:
                await asyncio.sleep(0.2)
                counts = (await runtime.batch_jobs.status(job["id"]))["request_counts"]
                now = counts["completed"] + counts["failed"]
                bar.update(now - done)
                done = now
        stop.set()
        await asyncio.gather(*tasks)
        out_lines = [
            json.dumps(line, ensure_ascii=False)
            async for line in runtime.batch_jobs.results(job["id"])
        ]
        await asyncio.to_thread(output.write_text, "\n".join(out_lines) + "\n")
        final: dict[str, int] = (await runtime.batch_jobs.status(job["id"]))["request_counts"]
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
    help="serve this worker's Prometheus metrics (lines, expert calls) on this port",
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
    asyncio.run(_work(settings, name, concurrency, metrics_port))


async def _work(
    settings: Settings, name: str | None, concurrency: int, metrics_port: int | None
) -> None:
    from coe.batch import BatchWorker
    from coe.runtime import build_runtime

    runtime = await build_runtime(settings, serve_admin=False)
    if metrics_port is not None:
        runtime.metrics.serve(metrics_port, settings.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    try:
        await asyncio.gather(
            *(
                BatchWorker(
                    runtime.batch_jobs.work,
                    lambda: runtime.engine,
                    name=base if concurrency == 1 else f"{base}-{i}",
                    claim_idle_s=settings.batch_claim_idle_s,
                    metrics=runtime.metrics,
                ).run(stop)
                for i in range(concurrency)
            )
        )
    finally:
        await runtime.close()
