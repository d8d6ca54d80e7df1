"""check-compose on pools: one pool service each, on its port, serving its pool, and only it
calling the pool's vLLM servers; each rule broken on a copy of the shipped files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from coe.cli.deploy import deploy_group
from coe.deploy.compose import check_compose, check_config, check_files
from coe.deploy.generate import expert_services
from coe.deploy.services import load_compose, parse_services
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig, load_config, parse_config
from tests.deploy.conftest import COMPOSE, CPU_CONFIG, GPU_CONFIG, run_compose

# --- pools: one pool service each, and only it calls the pool's servers -------------------


def gpu_data() -> dict[str, Any]:
    """The gpu experts file as data, to mutate."""
    data: dict[str, Any] = yaml.safe_load(GPU_CONFIG.read_text())
    return data


def pool_service(compose: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = compose["services"]["pool-gpu0"]
    return spec


def test_missing_pool_service_is_reported(compose: dict[str, Any], configs: dict[str, Any]) -> None:
    del compose["services"]["pool-gpu0"]
    assert check_config(configs["gpu"], compose, "gpu") == [
        "gpu: pools.gpu0.service http://pool-gpu0:8200: host 'pool-gpu0' is not a service in "
        "docker-compose.yml (services: expert-cpu, gateway, grafana, lb, prometheus, redis, "
        "vllm-coder, vllm-generalist, vllm-math-tutor, worker)"
    ]


def test_pool_service_must_run_coe_pool_serve(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    pool_service(compose)["command"] = ["serve", "--host", "0.0.0.0", "--port", "8200"]
    assert check_config(configs["gpu"], compose, "gpu") == [
        "gpu: pools.gpu0.service http://pool-gpu0:8200 points at service pool-gpu0 (profile "
        "gpu), which does not run `coe pool serve`"
    ]


def test_pool_service_on_another_port_is_reported(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    command = pool_service(compose)["command"]
    command[command.index("8200")] = "8300"
    assert check_config(configs["gpu"], compose, "gpu") == [
        "gpu: pools.gpu0.service http://pool-gpu0:8200 uses port 8200 but service pool-gpu0 "
        "(profile gpu) listens on 8300"
    ]
    # Without --port it listens on its pools' service port, which must then be one port.
    del command[command.index("--port") : command.index("--port") + 2]
    assert check_config(configs["gpu"], compose, "gpu") == []
    data = gpu_data()
    data["pools"]["gpu1"] = {"service": "http://pool-gpu0:8300"}
    command += ["--pool", "gpu1"]
    assert check_config(parse_config(data, "gpu"), compose, "gpu") == [
        "gpu: pools.gpu0.service http://pool-gpu0:8200 points at service pool-gpu0 (profile "
        "gpu), which runs `coe pool serve` without --port for pools on different ports "
        "(gpu0 at 8200, gpu1 at 8300); give each port its own pool service",
        "gpu: pools.gpu1.service http://pool-gpu0:8300 points at service pool-gpu0 (profile "
        "gpu), which runs `coe pool serve` without --port for pools on different ports "
        "(gpu0 at 8200, gpu1 at 8300); give each port its own pool service",
    ]


def test_pool_service_must_serve_the_pool(compose: dict[str, Any], configs: dict[str, Any]) -> None:
    command = pool_service(compose)["command"]
    command[command.index("gpu0")] = "gpu1"
    assert check_config(configs["gpu"], compose, "gpu") == [
        "gpu: pools.gpu0.service http://pool-gpu0:8200 points at service pool-gpu0 (profile "
        "gpu), which serves only pool gpu1 (add --pool gpu0)"
    ]
    # Without --pool it serves every pool of its file, gpu0 included.
    pool_service(compose)["command"] = command[: command.index("--pool")]
    assert check_config(configs["gpu"], compose, "gpu") == []


def test_one_pool_served_twice_is_reported(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    twin = copy.deepcopy(pool_service(compose))
    twin["command"] = twin["command"][: twin["command"].index("--pool")]  # every pool
    compose["services"]["pool-gpu0-b"] = twin
    assert check_config(configs["gpu"], compose, "gpu") == [
        "gpu: pool gpu0 is served by 2 pool services (pool-gpu0, pool-gpu0-b); run exactly "
        "one, or each keeps up to 2 resident on the same device"
    ]
    del compose["services"]["pool-gpu0-b"]
    pool_service(compose)["deploy"] = {"replicas": 2}
    assert check_config(configs["gpu"], compose, "gpu") == [
        "gpu: pool gpu0: service pool-gpu0 (profile gpu) runs 2 replicas; a pool service runs "
        "once, or each replica keeps up to 2 resident"
    ]


def test_sleep_server_must_be_a_vllm_service(compose: dict[str, Any]) -> None:
    data = gpu_data()
    data["pools"]["gpu0"]["params"]["servers"]["coder"] = "http://redis:6379"
    problems = check_config(parse_config(data, "gpu"), compose, "gpu")
    assert problems == [
        "gpu: pools.gpu0.params.servers.coder http://redis:6379 points at service redis, "
        "which is not a vLLM expert",
        "gpu: vLLM service vllm-coder (profile gpu) is not an endpoint of any expert (add "
        "http://vllm-coder:8000 to an expert's endpoints or to a pool's servers)",
    ]


def test_every_sleep_member_needs_its_server(compose: dict[str, Any]) -> None:
    data = gpu_data()
    del data["pools"]["gpu0"]["params"]["servers"]["coder"]
    problems = check_config(parse_config(data, "gpu"), compose, "gpu")
    assert problems[0] == (
        "gpu: pools.gpu0.params.servers: no server for coder (the sleep controller calls each "
        "member's own vLLM server; its endpoint is the pool service)"
    )


def direct_expert(endpoint: str) -> dict[str, Any]:
    return {"name": "direct", "model": "smollm2-coder", "endpoints": [endpoint]}


def test_an_expert_outside_the_pool_may_not_call_a_pooled_server(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    data = gpu_data()
    data["experts"].append(direct_expert("http://vllm-coder:8000"))
    problems = check_config(parse_config(data, "gpu"), compose, "gpu")
    assert problems == [
        "gpu: expert direct endpoint http://vllm-coder:8000 calls service vllm-coder (profile "
        "gpu) directly, but pool gpu0 drives it (pools.gpu0.params.servers.coder): gateways "
        "and workers must go through the pool service http://pool-gpu0:8200 (put direct in "
        "pool gpu0) or use a server of their own"
    ]
    # Also when the expert is in another experts file than the pool.
    cpu = yaml.safe_load(CPU_CONFIG.read_text())
    cpu["experts"].append(direct_expert("http://vllm-coder:8000"))
    problems = check_compose({"cpu": parse_config(cpu, "cpu"), "gpu": configs["gpu"]}, compose)
    assert (
        "cpu: expert direct endpoint http://vllm-coder:8000 calls service vllm-coder (profile "
        "gpu) directly, but pool gpu0 drives it (pools.gpu0.params.servers.coder): gateways "
        "and workers must go through the pool service http://pool-gpu0:8200 (put direct in "
        "pool gpu0) or use a server of their own"
    ) in problems


@pytest.mark.parametrize(
    ("controller", "params", "where"),
    [
        ("static", {"upstreams": {"a": "http://{host}:8000"}}, "upstreams.a"),
        ("lora", {"base_url": "http://{host}:8000", "max_loras": 1}, "base_url"),
        ("my-plugin", {"nested": {"url": "http://{host}:8000"}}, "nested.url"),
    ],
)
def test_other_controllers_servers_are_checked(
    controller: str, params: dict[str, Any], where: str
) -> None:
    compose = {
        "services": {
            "vllm-a": {"labels": {"coe.role": "expert"}, "command": ["--served-model-name", "a"]},
            "pool": {"command": ["pool", "serve", "--port", "8200"]},
            "redis": {"image": "redis"},
        }
    }

    def config(host: str) -> CoeConfig:
        text = json.dumps(params).replace("{host}", host)
        pool = {"service": "http://pool:8200", "controller": controller, "params": json.loads(text)}
        expert = {"name": "a", "model": "a", "endpoints": ["http://pool:8200"], "pool": "p"}
        return parse_config({"experts": [expert], "default_expert": "a", "pools": {"p": pool}})

    assert check_config(config("vllm-a"), compose, "x") == []
    assert check_config(config("redis"), compose, "x") == [
        f"x: pools.p.params.{where} http://redis:8000 points at service redis, which is not "
        "a vLLM expert",
        "x: vLLM service vllm-a is not an endpoint of any expert (add http://vllm-a:8000 to "
        "an expert's endpoints or to a pool's servers)",
    ]


def test_an_experts_file_from_before_pool_services_is_explained(tmp_path: Path) -> None:
    """The old layout (pooled experts calling their vLLM servers, no pool service) fails
    the schema; check-compose says what to change instead of a bare validation error."""
    data = gpu_data()
    del data["pools"]["gpu0"]["service"]
    del data["pools"]["gpu0"]["params"]
    for expert in data["experts"]:
        expert["endpoints"] = [f"http://vllm-{expert['name']}:8000"]
    old = tmp_path / "old-gpu.yaml"
    old.write_text(yaml.safe_dump(data))
    args = ["check-compose", "--compose", str(COMPOSE), "-c", str(CPU_CONFIG), "-c", str(old)]
    result = CliRunner().invoke(deploy_group, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("mismatch: ")]
    assert lines[0] == (
        f"mismatch: {old}: pools.gpu0 has no service (an experts file from before pool "
        "services): add `service: http://pool-gpu0:8200` (service pool-gpu0 runs `coe pool "
        "serve` for it) and point the pool's experts at it"
    )
    assert lines[3] == (
        f"mismatch: {old}: expert coder is in pool gpu0 but calls http://vllm-coder:8000 "
        "directly (an experts file from before pool services): set its endpoints to "
        "[http://pool-gpu0:8200] and name http://vllm-coder:8000 in "
        "pools.gpu0.params.servers.coder"
    )
    assert len(lines) == 4 and "disagree (4 mismatches)" in result.output


def test_an_experts_file_wrong_otherwise_still_raises(tmp_path: Path) -> None:
    data = gpu_data()
    data["pools"]["gpu0"]["capacity"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"pools\.gpu0\.capacity"):
        check_files([bad], load_compose(COMPOSE))


def test_gateway_and_worker_must_share_redis(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["worker"]["environment"] = dict(
        mutated["services"]["worker"]["environment"], COE_REDIS_URL="redis://other:6379/0"
    )
    problems = check_compose(configs, mutated)
    assert any("gateway and worker use different Redis" in p for p in problems), problems


def test_services_accept_list_forms() -> None:
    data = {
        "services": {
            "e": {
                "image": "vllm/vllm-openai",
                "command": "--model m --served-model-name a b --port 8001",
                "environment": ["VLLM_SERVER_DEV_MODE=1"],
                "labels": ["coe.role=expert"],
            }
        }
    }
    service = parse_services(data)["e"]
    assert service.served_names == ("a", "b")
    assert service.port == 8001
    assert service.environment == {"VLLM_SERVER_DEV_MODE": "1"}
    assert service.is_vllm


# --- generation --------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize(("flavour", "config_path"), [("cpu", CPU_CONFIG), ("gpu", GPU_CONFIG)])
def test_generated_services_agree_and_validate(
    flavour: str, config_path: Path, compose: dict[str, Any], tmp_path: Path
) -> None:
    config = load_config(config_path)
    generated = expert_services(config, flavour)
    mutated = copy.deepcopy(compose)
    for name, spec in list(mutated["services"].items()):
        if flavour in spec.get("profiles", []):
            del mutated["services"][name]
            mutated["services"]["gateway"]["depends_on"].pop(name, None)
    mutated["services"].update(generated)
    assert check_config(config, mutated, flavour) == []
    file = tmp_path / "docker-compose.yml"
    file.write_text(yaml.safe_dump(mutated, sort_keys=False))
    done = run_compose(["--profile", flavour, "config", "--quiet"], file=file)
    assert done.returncode == 0, done.stderr


def test_compose_experts_cli_prints_a_services_block() -> None:
    result = CliRunner().invoke(deploy_group, ["compose-experts", "-c", str(CPU_CONFIG)])
    assert result.exit_code == 0, result.output
    block = yaml.safe_load(result.output)
    assert list(block["services"]) == ["expert-cpu"]
    assert block["services"]["expert-cpu"]["command"][-2:] == ["--served-model-name", "smollm2"]


def test_generation_refuses_an_unknown_flavour() -> None:
    config = parse_config(yaml.safe_load(CPU_CONFIG.read_text()), CPU_CONFIG)
    with pytest.raises(ConfigError, match="flavour must be cpu or gpu"):
        expert_services(config, "tpu")
