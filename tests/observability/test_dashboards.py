"""The Grafana dashboards against what coe really exports: a real gateway, pool service and
batch worker (`coe` processes) behind fake experts, under a short load of chat (plain and
streamed), routing, pool swaps and one batch job, scraped by Debian's real Prometheus with
the shipped scrape config (bearer token included). Every panel's query must be valid and
return data. The committed JSON must be what tools/build_dashboards.py builds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coe.testing import FakeUpstream, Fault
from tests.pool.fake_lora import LoraServer
from tests.support.net import delete_prefix, eventually, free_port, wait_healthy
from tests.support.processes import REPO, coe_processes
from tests.support.server import ServedApp
from tools.build_dashboards import OUT_DIR, rendered, stale

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_CONFIG = REPO / "services" / "prometheus" / "prometheus.yml"
REDIS_URL = os.environ.get("COE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
METRICS_TOKEN = "dashboards-metrics-token-0123456789"
ADMIN_TOKEN = "dashboards-admin-token-0123456789"
RATE_WINDOW = "30s"
# Counted only when a batch work unit raises (a bug, or the store failing in mid-unit): no
# load of real requests moves them, so their queries must be valid and the worker must
# export the metric, but they may have no samples.
RARE_EVENTS = ("coe_batch_unit_errors_total", "coe_batch_units_given_up_total")
# What Grafana puts in place of the dashboards' variables (all values of a filter).
VARIABLES = {"$__rate_interval": RATE_WINDOW, "$__interval": "15s", "$expert": ".*", "$pool": ".*"}


# -- the dashboards' queries ----------------------------------------------------------------
def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(OUT_DIR.glob("*.json"))}


def substituted(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__rate_interval before $__r...
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def panel_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every target of every panel, variables substituted."""
    out = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{name} / {panel['title']}", substituted(target["expr"])))
    return out


def variable_queries() -> list[tuple[str, str]]:
    """Each `label_values(metric, label)` variable as the query that lists its values."""
    out = []
    for name, board in dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            found = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
            assert found, variable["query"]
            metric, label = found.groups()
            out.append((f"{name} / ${variable['name']}", f"count by ({label}) ({metric})"))
    return out


def test_committed_dashboards_are_what_the_builder_makes() -> None:
    assert stale() == [], "run `python -m tools.build_dashboards` and commit the JSON"
    assert sorted(rendered()) == sorted(dashboards())
    titles = {board["title"] for board in dashboards().values()}
    assert titles == {"coe overview", "coe experts", "coe pools", "coe batch"}
    for name, board in dashboards().items():
        (source, *_) = board["templating"]["list"]
        assert (source["name"], source["type"], source["query"]) == (
            "datasource",
            "datasource",
            "prometheus",
        ), name
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
                assert panel["targets"], (name, panel["title"])
    ids = [[p["id"] for p in board["panels"]] for board in dashboards().values()]
    assert all(len(set(i)) == len(i) for i in ids)


def test_a_hand_edit_of_the_committed_json_is_stale(tmp_path: Path) -> None:
    for name, text in rendered().items():
        (tmp_path / name).write_text(text)
    assert stale(tmp_path) == []
    board = tmp_path / "coe-pools.json"
    board.write_text(board.read_text().replace("coe_pool_queue_depth", "coe_pool_depth"))
    (tmp_path / "coe-extra.json").write_text("{}")
    assert stale(tmp_path) == ["coe-extra.json", "coe-pools.json"]


# -- a deployment in miniature ---------------------------------------------------------------
@dataclass
class Deployment:
    gateway: httpx.Client
    prometheus: str
    targets: dict[str, str]  # scrape job -> host:port


def write_experts(path: Path, alpha: str, beta: str, pool_port: int, lora_url: str) -> None:
    service = f"http://127.0.0.1:{pool_port}"
    adapters = {"e-x": "/adapters/x", "e-y": "/adapters/y", "e-z": "/adapters/z"}
    config = {
        "experts": [
            {"name": "alpha", "model": "alpha", "endpoints": [alpha]},
            {"name": "beta", "model": "beta", "endpoints": [beta]},
            *(
                {"name": e, "model": f"ad-{e[-1]}", "endpoints": [service], "pool": "p"}
                for e in adapters
            ),
        ],
        "default_expert": "alpha",
        "pipelines": {"auto": {"routers": ["default"]}},
        "routers_dirs": [str(REPO / "routers")],
        "pools": {
            "p": {
                "service": service,
                "state_ttl_s": 0.2,
                "controller": "lora",
                "capacity": 1,
                "retry_after_s": 1,
                "params": {"base_url": lora_url, "max_loras": 1, "adapters": adapters},
            }
        },
    }
    path.write_text(yaml.safe_dump(config))


def write_prometheus(tmp: Path, targets: dict[str, str]) -> Path:
    """The shipped scrape config, its targets on loopback and its token in a file here."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    token = tmp / "metrics-token"
    token.write_text(METRICS_TOKEN)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), "a scrape job the test does not start, or the reverse"
    for name, job in jobs.items():
        del job["dns_sd_configs"]
        job["static_configs"] = [{"targets": [targets[name]]}]
        job["authorization"]["credentials_file"] = str(token)
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def ask(model: str, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "how many legs has a spider"}],
        "max_tokens": 8,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def load(gateway: httpx.Client, alpha: FakeUpstream) -> None:
    """Traffic that moves every panel: chat (plain, streamed, failing, falling back), routes,
    pool swaps and a failed swap, one batch job."""
    for model in ("coe/auto", "alpha", "beta"):
        assert gateway.post("/v1/chat/completions", json=ask(model)).status_code == 200
        with gateway.stream("POST", "/v1/chat/completions", json=ask(model, True)) as r:
            assert r.status_code == 200 and "[DONE]" in r.read().decode()
    assert gateway.post("/v1/route", json={"query": "spiders"}).status_code == 200
    for model in ("e-x", "e-y", "e-x"):  # one adapter slot: each switch is a swap
        r = gateway.post("/v1/chat/completions", json=ask(model))
        assert r.status_code == 200, r.text
    gateway.post("/v1/chat/completions", json=ask("e-z"))  # its adapter refuses to load
    alpha.fault = Fault(mode="status", status=500, times=2)
    r = gateway.post("/v1/chat/completions", json=ask("coe/auto"))  # alpha fails, beta answers
    assert r.status_code == 200 and r.json()["model"] == "beta", r.text
    assert gateway.post("/v1/chat/completions", json=ask("alpha")).status_code >= 500
    assert gateway.post("/v1/chat/completions", json=ask("nobody")).status_code in (400, 404)
    run_batch(gateway)


def run_batch(gateway: httpx.Client) -> None:
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": ask(m)}
        for i, m in enumerate(("coe/auto", "alpha", "beta", "nobody"))
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    upload = gateway.post(
        "/v1/files", files={"file": ("q.jsonl", data)}, data={"purpose": "batch"}
    ).json()
    batch = gateway.post(
        "/v1/batches",
        json={
            "input_file_id": upload["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    ).json()

    def done() -> bool:
        status = gateway.get(f"/v1/batches/{batch['id']}").json()["status"]
        return status in ("completed", "failed")

    eventually(done, 30, "the batch job to finish")


def query(prometheus: str, expr: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10
    ).json()
    return answer


def empty_or_failed(prometheus: str, queries: list[tuple[str, str]]) -> list[str]:
    problems = []
    for where, expr in queries:
        answer = query(prometheus, expr)
        if answer.get("status") != "success":
            problems.append(f"{where}: {expr} -> {answer.get('error')}")
        elif not answer["data"]["result"]:
            problems.append(f"{where}: {expr} -> no data")
    return problems


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not Path(PROMETHEUS).is_file():
        pytest.skip("prometheus not installed (apt-get install prometheus) to run the panels")
    tmp = tmp_path_factory.mktemp("dashboards")
    prefix = f"coe-test-dashboards:{uuid.uuid4().hex[:10]}:"
    lora = LoraServer(max_loras=1)
    lora.fail.add("ad-z")
    served = ServedApp(lora.app).start()
    gateway_port, pool_port, worker_port, prom_port = (free_port() for _ in range(4))
    cfg = tmp / "experts.yaml"
    env = {
        "COE_REDIS_URL": REDIS_URL,
        "COE_STORE_PREFIX": prefix,
        "COE_ADMIN_TOKEN": ADMIN_TOKEN,
        "COE_METRICS_TOKEN": METRICS_TOKEN,
        "COE_BATCH_SWEEP_EVERY_S": "1",
    }
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        with (
            FakeUpstream("alpha") as alpha,
            FakeUpstream("beta") as beta,
            coe_processes(tmp, env) as procs,
        ):
            write_experts(cfg, alpha.base_url, beta.base_url, pool_port, served.base_url)
            procs.start("pool", "pool", "serve", "-c", str(cfg))
            procs.start("gateway", "serve", "-c", str(cfg), "--port", str(gateway_port))
            procs.start("worker", "worker", "-c", str(cfg), "--metrics-port", str(worker_port))
            scraped = {
                "coe-gateway": f"127.0.0.1:{gateway_port}",
                "coe-worker": f"127.0.0.1:{worker_port}",
                "coe-pool": f"127.0.0.1:{pool_port}",
            }
            config = write_prometheus(tmp, scraped)
            log = (tmp / "prometheus.log").open("wb")
            prometheus = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            prom_url = f"http://127.0.0.1:{prom_port}"
            for port in (pool_port, gateway_port):
                wait_healthy(f"http://127.0.0.1:{port}", timeout_s=60)
            with httpx.Client(base_url=f"http://127.0.0.1:{gateway_port}", timeout=15) as client:
                eventually(lambda: up(prom_url) == set(scraped), 30, "every target scraped")
                load(client, alpha)
                yield Deployment(client, prom_url, scraped)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        served.stop()
        delete_prefix(REDIS_URL, prefix)


def up(prometheus: str) -> set[str]:
    try:
        answer = query(prometheus, "up == 1")
    except httpx.HTTPError:
        return set()
    return {r["metric"]["job"] for r in answer.get("data", {}).get("result", [])}


def is_rare(expr: str) -> bool:
    return any(re.search(rf"\b{name}\b", expr) for name in RARE_EVENTS)


def test_every_panel_query_returns_data(deployment: Deployment) -> None:
    queries = [q for q in panel_queries() + variable_queries() if not is_rare(q[1])]
    assert len(queries) > 40
    # Each query is retried until all answer or the wait ends: a series needs two scrapes
    # inside the rate window before rate() has a value.
    deadline = time.monotonic() + 20
    problems = empty_or_failed(deployment.prometheus, queries)
    while problems and time.monotonic() < deadline:
        time.sleep(1)
        problems = empty_or_failed(deployment.prometheus, queries)
    assert not problems, "panels without data:\n" + "\n".join(problems)


def test_rare_event_panels_are_valid_and_their_metrics_exported(deployment: Deployment) -> None:
    rare = [q for q in panel_queries() if is_rare(q[1])]
    assert len(rare) == len(RARE_EVENTS)
    for where, expr in rare:
        answer = query(deployment.prometheus, expr)
        assert answer.get("status") == "success", (where, expr, answer.get("error"))
    exposed = httpx.get(
        f"http://{deployment.targets['coe-worker']}/metrics",
        headers={"authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=10,
    ).text
    for name in RARE_EVENTS:
        assert f"# TYPE {name} counter" in exposed, name


def test_a_query_on_a_name_coe_does_not_export_is_caught(deployment: Deployment) -> None:
    """The check above is not true by construction: a misspelt metric and invalid PromQL
    are each reported."""
    queries = [
        ("misspelt", "sum(rate(coe_request_total[30s]))"),
        ("invalid", "sum by (path (rate(coe_requests_total[30s]))"),
        ("real", "sum by (path) (rate(coe_requests_total[30s]))"),
    ]
    # The real one is asked again until it answers (a scrape that timed out on a loaded
    # machine leaves the rate window short); the other two must stay reported.
    deadline = time.monotonic() + 20
    problems = empty_or_failed(deployment.prometheus, queries)
    while any(p.startswith("real:") for p in problems) and time.monotonic() < deadline:
        time.sleep(1)
        problems = empty_or_failed(deployment.prometheus, queries)
    assert [p.split(":")[0] for p in problems] == ["misspelt", "invalid"], problems
