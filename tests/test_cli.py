"""The `coe` command as a user runs it: config checks, routing, a local batch run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from coe.testing import FakeUpstream

REPO = Path(__file__).resolve().parent.parent


def coe(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coe.cli", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=120,
    )


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    ok = coe("check-config", "-c", str(REPO / "experts.yaml"))
    assert ok.returncode == 0 and "ok (3 experts" in ok.stdout
    bad = tmp_path / "experts.yaml"
    bad.write_text("experts: []\ndefault_expert: x\nbogus: 1\n")
    out = coe("check-config", "-c", str(bad))
    assert out.returncode == 2
    assert f"error: {bad}: invalid configuration" in out.stderr
    assert "bogus: unknown key" in out.stderr and "Traceback" not in out.stderr


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
