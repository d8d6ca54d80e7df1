"""The `coe` command as a user runs it: config checks, routing, a local batch run (in-process,
through the console script's own entry; `coe serve`'s refusal to start runs as a process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from coe.cli import main
from coe.testing import FakeUpstream
from tests.support.cli import Ran, coe_in_process

REPO = Path(__file__).resolve().parent.parent


def coe(*args: str, cwd: Path = REPO) -> Ran:
    return coe_in_process(*args, cwd=cwd)


def test_every_command_family_is_on_the_root_group() -> None:
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0, out.output
    listed = {line.split()[0] for line in out.output.split("Commands:")[1].splitlines() if line}
    assert listed == {
        "serve",
        "up",
        "prepare-model",
        "check-config",
        "route",
        "batch",
        "worker",
        "deploy",
        "pool",
        "eval",
        "build",
    }


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    ok = coe("check-config", "-c", str(REPO / "experts.yaml"))
    assert ok.returncode == 0 and "ok (3 experts" in ok.stdout
    bad = tmp_path / "experts.yaml"
    bad.write_text("experts: []\ndefault_expert: x\nbogus: 1\n")
    out = coe("check-config", "-c", str(bad))
    assert out.returncode == 2
    assert f"error: {bad}: invalid configuration" in out.stderr
    assert "bogus: unknown key" in out.stderr and "Traceback" not in out.stderr


def test_check_config_loads_the_plugins_it_names(tmp_path: Path) -> None:
    """Past the schema: a router type or swap-controller kind nobody provides, or params its
    class refuses, fail the check (nothing is started)."""
    base = yaml.safe_load((REPO / "experts.yaml").read_text())
    base["routers_dirs"] = [str(REPO / "routers")]
    base["local_servers"] = []
    ok = coe("check-config", "-c", str(_write(tmp_path / "ok.yaml", base)))
    assert ok.returncode == 0, ok.stderr
    assert "router topic: embedding" in ok.stdout
    cases = {
        "router type": (
            {**base, "routers": {**base["routers"], "topic": {"type": "nope"}}},
            "unknown router type 'nope'",
        ),
        "router params": (
            {
                **base,
                "routers": {
                    **base["routers"],
                    "topic": {"type": "embedding", "params": {"colour": 1}},
                },
            },
            "routers.topic.params (embedding)",
        ),
        "controller kind": (
            {**base, "pools": {"gpu0": {"service": "http://pool:8200", "controller": "teleport"}}},
            "pools.gpu0.controller: unknown swap controller kind 'teleport'",
        ),
        "controller params": (
            {
                **base,
                "pools": {
                    "gpu0": {
                        "service": "http://pool:8200",
                        "controller": "lora",
                        "params": {"colour": 1},
                    }
                },
            },
            "pools.gpu0.params (lora)",
        ),
    }
    for what, (config, message) in cases.items():
        out = coe("check-config", "-c", str(_write(tmp_path / f"{what}.yaml", config)))
        assert out.returncode == 2, (what, out.stdout)
        assert message in out.stderr and "Traceback" not in out.stderr, (what, out.stderr)


def _write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.process
def test_serve_refuses_placeholder_token() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "coe.cli", "serve", "--port", "1"],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=60,
        env={"COE_ADMIN_TOKEN": "changeme", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "COE_ADMIN_TOKEN" in out.stderr


def test_route_and_batch_run(tmp_path: Path) -> None:
    with FakeUpstream("cli") as up:
        cfg = tmp_path / "experts.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "experts": [
                        {"name": n, "model": "m", "endpoints": [up.base_url]} for n in "ab"
                    ],
                    "default_expert": "b",
                    "pipelines": {"auto": {"routers": ["default"]}},
                    "routers_dirs": [str(REPO / "routers")],
                }
            )
        )
        routed = coe("route", "hello", "-c", str(cfg))
        assert routed.returncode == 0, routed.stderr
        assert json.loads(routed.stdout)["chosen"] == ["b"]
        src = tmp_path / "in.jsonl"
        src.write_text(
            "\n".join(
                [
                    json.dumps(
                        {
                            "custom_id": f"x{i}",
                            "body": {
                                "model": "coe/auto" if i % 2 else "a",
                                "messages": [{"role": "user", "content": f"q{i}"}],
                            },
                        }
                    )
                    for i in range(7)
                ]
                + ["{broken"]
            )
        )
        out_file = tmp_path / "out.jsonl"
        run = coe("batch", "run", str(src), "-o", str(out_file), "-c", str(cfg))
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stderr.strip().splitlines()[-1]) == {
            "total": 8,
            "completed": 7,
            "failed": 1,
        }
        lines = [json.loads(x) for x in out_file.read_text().splitlines()]
        assert [ln["custom_id"] for ln in lines] == [*(f"x{i}" for i in range(7)), "line-8"]
        assert lines[0]["response"]["body"]["choices"][0]["message"]["content"] == "[cli] q0"
        assert lines[1]["response"]["body"]["coe"]["expert"] == "b"


def test_build_instructions_calls_the_writer_like_any_expert_call(tmp_path: Path) -> None:
    """`coe build instructions --writer` goes through the expert client: the writer's model
    id, defaults and system prompt, and its next replica when the first is down."""
    with FakeUpstream("writer") as up:
        cfg = tmp_path / "experts.yaml"
        writer = {
            "name": "w",
            "model": "writer-model",
            "endpoints": ["http://127.0.0.1:9", up.base_url],  # port 9: connection refused
            "defaults": {"top_p": 0.5},
            "system_prompt": "Write tersely.",
            "description": "solves calculus problems",
        }
        cfg.write_text(yaml.safe_dump({"experts": [writer], "default_expert": "w"}))
        out_file = tmp_path / "instructions.json"
        built = coe(
            "build", "instructions", "-c", str(cfg), "--writer", "w", "--out", str(out_file)
        )
        assert built.returncode == 0, built.stderr
        written = json.loads(out_file.read_text())
        assert written["w"].startswith("[writer]") and "calculus" in written["w"]
        body = up.state.bodies[-1]
        assert body["model"] == "writer-model" and body["top_p"] == 0.5
        assert body["messages"][0] == {"role": "system", "content": "Write tersely."}
