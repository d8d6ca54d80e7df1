"""The `observability` profile: Prometheus scrapes every coe service of the compose file on
the port it serves /metrics on, Grafana gets the provisioned data source and dashboards;
both pinned, loopback only, and validated by the real compose binary and promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from coe.deploy.exposure import published_ports
from tests.deploy.conftest import ROOT, run_compose

PROMETHEUS = ROOT / "services" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "services" / "grafana"
OBSERVABILITY = ("prometheus", "grafana")


def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def mounts(spec: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the project) of the bind mounts."""
    out = {}
    for entry in spec.get("volumes", []):
        host, container, *_ = str(entry).split(":")
        if host.startswith("./"):
            out[container] = host
    return out


def test_observability_services_are_pinned_loopback_and_in_their_profile(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in OBSERVABILITY:
        spec = services[name]
        assert spec["profiles"] == ["observability"], name
        image, _, tag = spec["image"].partition(":")
        assert tag.lstrip("v")[:1].isdigit(), spec["image"]  # a release, not latest
        assert image in ("prom/prometheus", "grafana/grafana"), name
        ports = published_ports(spec, {})
        assert ports and all(p.host_ip == "127.0.0.1" for p in ports), (name, ports)
        for host in mounts(spec).values():
            assert (ROOT / host).exists(), (name, host)
    assert not {"prometheus", "grafana"} & {
        n for n, s in services.items() if "observability" not in s.get("profiles", [])
    }


def test_prometheus_scrapes_every_coe_service_on_its_metrics_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]["command"]
    ports = {
        "gateway": services["gateway"]["environment"]["COE_PORT"],
        "worker": worker[worker.index("--metrics-port") + 1],
        "pool-gpu0": services["pool-gpu0"]["command"][
            services["pool-gpu0"]["command"].index("--port") + 1
        ],
    }
    assert services["worker"]["environment"]["COE_HOST"] == "0.0.0.0"  # reachable by Prometheus
    found = {}
    for job in scrape_jobs().values():
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                found[name] = str(sd["port"])
        # /metrics wants COE_METRICS_TOKEN: every job sends the file the service writes it to
        assert job["authorization"]["credentials_file"] == "/run/coe/metrics-token", job
    assert found == ports
    prometheus = services["prometheus"]
    assert "/run/coe/metrics-token" in prometheus["command"][0]
    assert "$$COE_METRICS_TOKEN" in prometheus["command"][0]
    assert prometheus["environment"]["COE_METRICS_TOKEN"] == "${COE_METRICS_TOKEN:-}"
    assert "/run/coe" in prometheus["tmpfs"]
    assert mounts(prometheus)["/etc/prometheus/prometheus.yml"] == (
        "./services/prometheus/prometheus.yml"
    )


def test_grafana_is_provisioned_with_the_data_source_and_dashboards(
    compose: dict[str, Any],
) -> None:
    grafana = mounts(compose["services"]["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./services/grafana/provisioning"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/coe.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert grafana[provider["options"]["path"]] == "./services/grafana/dashboards"
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    dashboards = sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json"))
    assert dashboards == [
        "coe-batch.json",
        "coe-experts.json",
        "coe-overview.json",
        "coe-pools.json",
    ]
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert Path(home).name in dashboards
    assert Path(home).parent.as_posix() == provider["options"]["path"]


@pytest.mark.process
def test_real_compose_validates_the_observability_profile() -> None:
    done = run_compose(
        ["--profile", "cpu", "--profile", "observability", "config", "--format", "json"]
    )
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    assert set(OBSERVABILITY) <= set(model["services"])
    assert model["services"]["grafana"]["depends_on"]["prometheus"]["condition"] == (
        "service_healthy"
    )
    plain = run_compose(["config", "--format", "json"])
    assert plain.returncode == 0, plain.stderr
    assert not set(OBSERVABILITY) & set(json.loads(plain.stdout)["services"])


@pytest.mark.process
def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus) to check its config")
    done = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
