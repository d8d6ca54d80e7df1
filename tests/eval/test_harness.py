"""The evaluation harness finds routers as serving does: the config's `routers_dirs` (relative
to the base folder) and the entry points, not a folder of the source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe.errors import ConfigError
from coe.eval.harness import build_router, offline_config
from coe.routing.encoders import EncoderCache

REPO = Path(__file__).resolve().parents[2]
ROUTER = """
from coe.routing import RouteContext, RouteDecision, Router
from coe.routing.decision import ranked_from_scores


class FirstRouter(Router):
    type_name = "eval-first"

    async def route(self, query: str, ctx: RouteContext) -> RouteDecision:
        scores = {sorted(ctx.experts)[0]: 1.0}
        return RouteDecision(candidates=ranked_from_scores(scores), router=self.name, reason="x")
"""


def test_routers_come_from_the_configs_folders(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "first.py").write_text(ROUTER)
    config = offline_config(["a", "b"], "a", routers_dirs=["mine"])
    router = build_router("eval-first", {}, config, EncoderCache(), base_dir=tmp_path)
    assert type(router).__name__ == "FirstRouter" and router.deps.base_dir == tmp_path
    with pytest.raises(ConfigError, match="unknown router type 'category'"):
        build_router("category", {}, config, EncoderCache(), base_dir=tmp_path)


def test_the_default_folder_is_relative_to_the_base_folder(tmp_path: Path) -> None:
    config = offline_config(["a"], "a")
    assert type(build_router("default", {}, config, EncoderCache(), base_dir=REPO)).__module__
    with pytest.raises(ConfigError, match="routers directory does not exist"):
        build_router("default", {}, config, EncoderCache(), base_dir=tmp_path)
