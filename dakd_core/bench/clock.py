"""Wall and CPU seconds of a block, children included.

On a machine shared with other jobs the wall clock of a single-worker run measures the queue as
much as the work (a run took 72 s of wall for 6 s of CPU here while others trained): the CPU
seconds a run consumes are the stable measure of how much work it does. Scaling with workers is a
wall-clock property and keeps the wall figure. Children count once reaped (a process pool's
workers are, when the pool shuts down inside the block).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.wall`, `sw.cpu` (seconds)."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> "Stopwatch":
        self._wall0, self._cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = cpu_seconds() - self._cpu0
