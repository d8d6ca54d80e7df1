"""The Ray engine's assign step: the driver calls the job's assigner once, after every line
is routed and before any is answered, and the expert it assigns answers the line."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from coe.batch.assign import Assigner, Routed
from coe.config import Settings
from coe.experts.schema import CoeConfig
from coe.pipeline import Plan
from coe.ray_batch import RayOptions, run_on_ray
from coe.routing.decision import Candidate
from coe.testing import FakeUpstream
from tests.batch.test_assign import LINES, batch_file, config

pytestmark = [pytest.mark.ray]


class OddLinesToE1(Assigner):
    """Sends the odd lines to e1 and records, per call, how many lines it saw and how many
    requests the experts had had by then."""

    name = "odd-to-e1"

    def __init__(self, upstreams: list[FakeUpstream]):
        self.upstreams = upstreams
        self.calls: list[tuple[int, int]] = []

    async def assign(self, job_id: str, lines: Sequence[Routed]) -> Mapping[int, Plan]:
        self.calls.append((len(lines), sum(u.state.requests for u in self.upstreams)))
        out = {}
        for line in lines:
            if line.index % 2:
                decision = replace(line.plan.decision, candidates=(Candidate("e1", 1.0),))
                out[line.index] = replace(line.plan, decision=decision)
        return out


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    ups = [FakeUpstream(f"u{i}").start() for i in range(2)]
    yield ups
    for u in ups:
        u.stop()


def test_the_assigned_expert_answers_on_ray(
    tmp_path: Path, upstreams: list[FakeUpstream], ray_local: None
) -> None:
    cfg = config([u.base_url for u in upstreams])
    (tmp_path / "experts.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "in.jsonl").write_text(batch_file() + "\n")
    assigner = OddLinesToE1(upstreams)
    summary = run_on_ray(
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out.jsonl"),
        Settings(redis_url=None, experts_file=tmp_path / "experts.yaml"),
        CoeConfig.model_validate(cfg),
        RayOptions(route_actors=1, answer_actors=1, assigner=assigner),
    )
    assert summary.completed == LINES
    assert assigner.calls == [(LINES, 0)]  # once, all lines routed, none answered
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [ln["custom_id"] for ln in lines] == [f"q{i}" for i in range(LINES)]
    for i, line in enumerate(lines):
        body = line["response"]["body"]
        expert = "e1" if i % 2 else "e0"
        assert body["coe"]["expert"] == expert
        assert body["choices"][0]["message"]["content"] == f"[u{expert[1]}] question {i}"
    assert summary.experts == {"e0": LINES // 2, "e1": LINES // 2}
