"""Crash points for the crash-safety tests: `COE_BATCH_FAULT=<point>:<n>` makes a worker
exit at once (`os._exit(137)`, as under SIGKILL) the n-th time it passes `point`, or every
time with `<point>:always`. Unset (always, outside tests) it costs one string comparison.

With `COE_BATCH_FAULT_ONCE=<path>` the exit happens once across every process that shares
the path (the first to create the file exits): a batch engine that restarts its dead
workers, which would hit the point again, is killed once.

Points: `route:saved` (a line's route stored, the unit not finished), `queue:locked` (a
phase's queue lock taken, its units not yet queued), `run:answered` (an expert answered,
the result not yet written), `aggregate:answered` (combined, not yet written).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = "COE_BATCH_FAULT"
ONCE_ENV = "COE_BATCH_FAULT_ONCE"
POINTS = ("route:saved", "queue:locked", "run:answered", "aggregate:answered")


class Faults:
    def __init__(self, spec: str | None = None, once: str | None = None):
        self.point = ""
        self.nth = 0  # 0: every time
        if spec:
            point, _, when = spec.rpartition(":")
            if point not in POINTS or not (when == "always" or when.isdigit()):
                raise ValueError(f"{ENV}={spec!r}: expected <point>:<n|always>, points {POINTS}")
            self.point, self.nth = point, 0 if when == "always" else int(when)
        self._seen = 0
        self.once = once

    @classmethod
    def from_env(cls) -> Faults:
        return cls(os.environ.get(ENV), os.environ.get(ONCE_ENV))

    def hit(self, point: str) -> None:
        if point != self.point:
            return
        self._seen += 1
        if self.nth in (0, self._seen) and self._first():
            log.error("%s=%s: exiting at %s (pass %d)", ENV, point, point, self._seen)
            logging.shutdown()
            os._exit(137)

    def _first(self) -> bool:
        """Without `once`, always; with it, only in the process that creates the file."""
        if not self.once:
            return True
        try:
            os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True
