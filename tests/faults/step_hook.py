"""Imported by a zygote child (tests/faults/kill.py `hooks`) before `dakd` runs: right after the
bookkeeping of each step in DAKD_TEST_PAUSE_AT (comma-separated) the stage writes the file
`at-<step>` in DAKD_TEST_DIR, then waits, up to 300 s, until the test writes `go-<step>` there or
the stage has received a stop signal. A test acts (signals the run, stops its tracking server)
once `at-<step>` exists, so what it does always happens at that step, however loaded the machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dakd_core.train import engine

_STEPS = {int(s) for s in os.environ["DAKD_TEST_PAUSE_AT"].split(",")}
_DIR = Path(os.environ["DAKD_TEST_DIR"])
_end_step = engine.RunKeeper.end_step


def _signalled() -> bool:
    stop = getattr(engine, "STOP", None)  # (absent before graceful preemption: the signal kills at once)
    return stop is not None and stop.signum is not None


def _end_step_then_wait(self, step: int, losses: dict) -> None:
    _end_step(self, step, losses)
    if step in _STEPS:
        (_DIR / f"at-{step}").write_text(str(step))
        deadline = time.monotonic() + 300
        while not (_DIR / f"go-{step}").exists() and not _signalled() and time.monotonic() < deadline:
            time.sleep(0.01)


engine.RunKeeper.end_step = _end_step_then_wait
