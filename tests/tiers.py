"""The test tiers: what each test needs, marked from the fixtures it uses and the files it is
in, and a guard that fails a test of the fast tier (`make test-fast`) that starts a process.

Markers (pyproject): vllm, ray, embed, redis, browser, process. The fast tier deselects vllm,
ray, browser and process; the guard keeps that selection honest.
"""

from __future__ import annotations

import asyncio
import multiprocessing.process
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# A test that uses one of these fixtures (directly or through another fixture) needs the marks.
FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "vllm_expert": ("vllm",),
    "ray_local": ("ray",),
    "encoders": ("embed",),
    "redis_store": ("redis",),
    "redis_server": ("process",),  # a redis-server of the test's own
}

# Files (under tests/) whose every test needs the marks.
FILE_MARKS: dict[str, tuple[str, ...]] = {
    "console/test_browser.py": ("browser", "process"),
    "gateway/test_fuzz.py": ("fuzz",),  # in-process, but half a minute of generated input
    "batch/test_redis_wipe.py": ("process",),
    "gateway/test_metrics_auth.py": ("process",),
    "gateway/test_overload.py": ("process",),
    "gateway/test_reload_replicas.py": ("process",),
    "observability/test_metrics_worker.py": ("process",),
    "pool/test_service_processes.py": ("process",),
    "pool/test_process_real.py": ("process",),
    "pool/test_lora_real.py": ("process",),
    "store/test_redis_outages.py": ("process",),
}

# In files that mix in-process and process tests: the fixtures there that start processes.
FILE_FIXTURE_MARKS: dict[str, dict[str, tuple[str, ...]]] = {
    "gateway/test_hardening.py": {"served": ("process",)},
    "gateway/test_replicas.py": {"two_gateways": ("process",)},
    "gateway/test_secrets.py": {"gateway": ("process",)},
    "observability/test_dashboards.py": {"deployment": ("process",)},
    "routing/test_thirdparty.py": {"site": ("process",)},  # pip installs the package
    "plugins/test_out_of_tree.py": {"site": ("process",)},  # pip installs the package
}

# What the standard library runs once to answer a question about the machine, for libraries
# the tests use (platform's `uname -p` for the openai client's headers, ctypes' `ldconfig -p`
# when trio looks for libpthread): not a process of the test's own.
PROBES = frozenset({"uname", "ldconfig", "ldconfig.real"})


def _probe(args: tuple[Any, ...]) -> bool:
    """Whether Popen._execute_child(self, args, ...) runs one of PROBES."""
    argv = args[1] if len(args) > 1 else None
    if isinstance(argv, (list, tuple)) and argv:
        return Path(str(argv[0])).name in PROBES
    return False


TESTS = Path(__file__).resolve().parent


def mark_items(items: list[pytest.Item]) -> None:
    """Add each item's marks from the tables above (explicit marks stay as written)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        marks: set[str] = set()
        for fixture, fixture_marks in FIXTURE_MARKS.items():
            if fixture in names:
                marks.update(fixture_marks)
        rel = _relative(item)
        marks.update(FILE_MARKS.get(rel, ()))
        for fixture, fixture_marks in FILE_FIXTURE_MARKS.get(rel, {}).items():
            if fixture in names:
                marks.update(fixture_marks)
        for name in sorted(marks):
            item.add_marker(name)


def _relative(item: pytest.Item) -> str:
    try:
        return item.path.resolve().relative_to(TESTS).as_posix()
    except ValueError:
        return ""


def fast_tier(config: pytest.Config) -> bool:
    """Whether this run's `-m` leaves out every test marked `process`."""
    markexpr = str(config.getoption("markexpr", "") or "")
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression

    expression = Expression.compile(markexpr)
    try:
        return not expression.evaluate(lambda name, **_: name == "process")
    except TypeError:  # an older matcher signature
        return not expression.evaluate(lambda name: name == "process")  # type: ignore[arg-type]


class SpawnGuard:
    """While installed, every way to start a process records the running test and raises."""

    def __init__(self) -> None:
        self.current: pytest.Item | None = None
        self.spawned: dict[str, list[str]] = {}
        self.reported: set[str] = set()
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        self._patch(subprocess.Popen, "_execute_child", "subprocess.Popen")
        self._patch(os, "fork", "os.fork")
        self._patch(os, "forkpty", "os.forkpty")
        self._patch(os, "posix_spawn", "os.posix_spawn")
        self._patch(os, "posix_spawnp", "os.posix_spawnp")
        self._patch(multiprocessing.process.BaseProcess, "start", "multiprocessing")
        self._patch(asyncio, "create_subprocess_exec", "asyncio.create_subprocess_exec")
        self._patch(asyncio, "create_subprocess_shell", "asyncio.create_subprocess_shell")

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch(self, owner: Any, name: str, what: str) -> None:
        if not hasattr(owner, name):
            return
        original = getattr(owner, name)

        def refuse(*args: Any, **kwargs: Any) -> Any:
            if what == "subprocess.Popen" and _probe(args):
                return original(*args, **kwargs)
            test = self.current.nodeid if self.current is not None else "(no test)"
            self.spawned.setdefault(test, []).append(what)
            raise RuntimeError(
                f"{test} started a process ({what}) in the fast tier: mark it `process` "
                "(tests/tiers.py) or keep it in-process"
            )

        setattr(owner, name, refuse)
        self._undo.append(lambda: setattr(owner, name, original))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        self.current = item
        try:
            yield
        finally:
            self.current = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        outcome = yield
        report = outcome.get_result()
        spawned = self.spawned.get(item.nodeid)
        if spawned and report.failed:
            self.reported.add(item.nodeid)
        elif call.when == "teardown" and spawned and item.nodeid not in self.reported:
            # The code under test may have swallowed the error: the test fails all the same.
            report.outcome = "failed"
            report.longrepr = (
                f"{item.nodeid} started a process in the fast tier ({', '.join(spawned)}): "
                "mark it `process` (tests/tiers.py) or keep it in-process"
            )
