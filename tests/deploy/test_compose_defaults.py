"""The shipped compose file is safe as it stands: the gateway and its balancer listen on
loopback, chat calls need API keys, /metrics takes a token from the environment; and
check-compose refuses a gateway opened to every interface without keys or a metrics token."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from coe.cli.deploy import deploy_group
from coe.deploy.compose import check_compose
from coe.deploy.exposure import check_exposure, interpolate
from tests.deploy.conftest import COMPOSE, run_compose

METRICS = "metrics-token-0123456789abcdef"


def test_shipped_defaults_publish_on_loopback_with_keys_required(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert interpolate(gateway["ports"][0], {}) == "127.0.0.1:8000:8000"
    assert interpolate(compose["services"]["lb"]["ports"][0], {}) == "127.0.0.1:8080:8080"
    assert interpolate(gateway["environment"]["COE_REQUIRE_API_KEY"], {}) == "1"
    for name in ("gateway", "worker", "pool-gpu0"):
        env = compose["services"][name]["environment"]
        assert env["COE_METRICS_TOKEN"] == "${COE_METRICS_TOKEN:-}", name
    assert check_exposure(compose) == []


@pytest.mark.process
def test_real_compose_resolves_the_defaults_and_wires_the_metrics_token() -> None:
    done = run_compose(["--profile", "lb", "config", "--format", "json"])
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    gateway = model["services"]["gateway"]
    assert gateway["ports"][0]["host_ip"] == "127.0.0.1"
    assert gateway["environment"]["COE_REQUIRE_API_KEY"] == "1"
    assert model["services"]["lb"]["ports"][0]["host_ip"] == "127.0.0.1"


def test_gateway_on_every_interface_without_keys_or_metrics_token_is_refused(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    opened = {"COE_PUBLISH": "0.0.0.0:8000", "COE_REQUIRE_API_KEY": "0"}
    problems = check_compose(configs, compose, opened)
    assert len(problems) == 2, problems
    assert "gateway publishes" in problems[0] and "without keys" in problems[0]
    assert "serves /metrics to anyone" in problems[1]
    # keys on and a metrics token set: open on every interface is accepted (behind TLS)
    safe = {"COE_PUBLISH": "0.0.0.0:8000", "COE_METRICS_TOKEN": METRICS}
    assert check_compose(configs, compose, safe) == []
    # the balancer opened while the gateways take no keys is refused as well
    lb = check_exposure(compose, {"COE_LB_PUBLISH": "8080", "COE_REQUIRE_API_KEY": "false"})
    assert any("service lb publishes" in p and "without keys" in p for p in lb), lb


def test_check_compose_cli_reads_the_shell_environment() -> None:
    runner = CliRunner()
    args = ["check-compose", "--compose", str(COMPOSE)]
    ok = runner.invoke(deploy_group, args, env={"COE_PUBLISH": None, "COE_REQUIRE_API_KEY": None})
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(deploy_group, args, env={"COE_PUBLISH": "8000", "COE_REQUIRE_API_KEY": "0"})
    assert bad.exit_code != 0
    assert "every interface" in bad.output
