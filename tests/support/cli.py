"""The `coe` command run in-process, as its console script runs it (`coe.cli.run`: a CoeError
is `error: ...` on stderr and exit 2), with stdout and stderr apart: no process to start."""

from __future__ import annotations

import logging
import os
import sys
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
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    argv, here = sys.argv, Path.cwd()
    code = 0
    with CliRunner().isolation() as (out, err, _):
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
            root.handlers[:], root.level = handlers, level
            stdout, stderr = out.getvalue(), err.getvalue()
    return Ran(code, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
