"""The `coe` command run in-process, as its console script runs it (`coe.cli.run`: a CoeError
is `error: ...` on stderr and exit 2), with stdout and stderr apart: no process to start.

Logging starts as in a fresh process (what earlier tests configured, uvicorn's own handlers
among it, is set aside: every logger reaches the root, which the command configures) and is
put back afterwards."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from coe.cli import run


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def coe_in_process(*args: str, cwd: Path | None = None) -> Ran:
    """`coe ARGS` in this process; the root logger and the working folder are restored."""
    argv, here = sys.argv, Path.cwd()
    code = 0
    with _fresh_logging(), CliRunner().isolation() as (out, err, _):
        sys.argv = ["coe", *args]
        try:
            if cwd is not None:
                os.chdir(cwd)
            run()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            sys.argv = argv
            os.chdir(here)
            stdout, stderr = out.getvalue(), err.getvalue()
    return Ran(code, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


@contextmanager
def _fresh_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    loggers = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [(lg, lg.handlers[:], lg.propagate, lg.disabled, lg.level) for lg in loggers]
    for logger in loggers:
        logger.handlers[:], logger.propagate, logger.disabled = [], True, False
        logger.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        for logger, handlers, propagate, disabled, level in saved:
            logger.handlers[:], logger.propagate, logger.disabled = handlers, propagate, disabled
            logger.setLevel(level)
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
