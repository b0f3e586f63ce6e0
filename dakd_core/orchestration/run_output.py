"""What `dakd run` shows on the terminal, and the log file that takes everything else.

kfp.local (2.17) writes a lot while it runs a pipeline: it reads each task subprocess's output
through a pipe and `print`s it (the executor input/output JSON, warnings, tracebacks), its own
`logging` handler writes to `sys.stdout`, and `warnings` go to `sys.stderr` (about 1,400 lines for
the demo). `output_to_log` points file descriptors 1 and 2 (and Python's `sys.stdout` /
`sys.stderr` on them) at `<out>/logs/<run_name>.log` for the duration of the run, so that whatever
kfp.local, a library or a subprocess writes ends up there; `dakd run` writes its own lines to a
copy of the original stdout. `TaskProgress` reads kfp.local's "Executing task" / "finished" lines
back from that log and prints one line per finished task, so the terminal shows the run is alive.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_TAIL_LINES = 20

# "scheme://user:password@host": a user name without '/', then a password that may hold '/'
# (SQLAlchemy database URLs allow it) but not '@', so "s3://bucket/key@v" is left alone.
# (dakd_core.tracking.redact also masks the values of secret-named environment variables, and
# PWD is one by its rule: it would mask the working directory out of every path shown.)
_URL_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@:]*(?::[^\s@]*)?@")

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # kfp.local colours task names and statuses
# kfp.local's log lines (MillisecondFormatter, "HH:MM:SS.ffffff"; the task name in quotes):
#   12:00:01.123 - INFO - Executing task 'pretrain-2'
#   12:00:09.456 - INFO - Task 'pretrain-2' finished with status SUCCESS
_TIME = r"(?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d(?:\.\d+)?) - \w+ - "
_STARTED_RE = re.compile(_TIME + r"Executing task '(?P<task>[^']+)'")
_FINISHED_RE = re.compile(_TIME + r"Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_REUSED_RE = re.compile(r"\s*dakd reuse: task '(?P<task>[^']+)'")  # reuse.REUSE_MARK


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def mask_credentials(text: str) -> str:
    """`text` with the `user:password@` part of every URL in it replaced by `***@`."""
    return _URL_USERINFO_RE.sub(lambda m: m["scheme"] + "***@", text)


@contextlib.contextmanager
def output_to_log(log_path: Path) -> Iterator[TextIO]:
    """Send fds 1 and 2 (and `sys.stdout`/`sys.stderr`) to `log_path` (appended) inside the block;
    yields a line-buffered stream on the original stdout. Everything is restored on exit, also
    when the block raises, so an error message after it reaches the terminal again."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    terminal = open(os.dup(saved_fds[0]), "w", buffering=1, errors="backslashreplace")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # fd level: C extensions and child processes that inherit fds 1/2 write here too
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Python level, line-buffered: the log stays current for TaskProgress (and `tail -f`), and
        # nothing waits in a buffer when the fds go back to the terminal
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in (*saved_fds, log_fd):
            os.close(fd)
        terminal.close()


@contextlib.contextmanager
def kfp_local_shared_state() -> Iterator[None]:
    """Contain kfp.local's unlocked swaps of process-wide state during a pipeline run.

    Around every task kfp.local (2.17) replaces the root logger's handlers and level
    (`local_logger_context`) and `builtins.print` (`indented_print`), and puts back what it saw
    before. ParallelFor items run in threads, so these swaps interleave: a task's "finished" line
    is dropped when the other thread has already put the root logger back to WARNING, and an
    indenting `print` or kfp's handler outlives the run. Here the root logger gets an INFO handler
    in kfp.local's format on `sys.stdout` (the log) for the run, and everything is put back after.
    """
    from kfp.local.logging_utils import MillisecondFormatter

    root = logging.getLogger()
    saved_handlers, saved_level, saved_print = root.handlers[:], root.level, builtins.print
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(MillisecondFormatter(fmt="%(asctime)s - %(levelname)s - %(message)s",
                                              datefmt="%H:%M:%S.%f"))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        builtins.print = saved_print


def log_tail(log_path: Path, start: int = 0, task: str | None = None, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` non-blank lines written to the log from byte `start` on, plain text,
    credentials masked. With `task` (its kfp.local name), the lines up to kfp.local's "finished"
    line for its last run: the end of the task's own output, where its traceback is (after a
    failure kfp.local still runs the exit handler, whose output would fill the plain tail)."""
    with open(log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", errors="replace")
    kept = [line for line in strip_ansi(text).splitlines() if line.strip()]
    if task is not None:
        ends = [i for i, line in enumerate(kept) if (m := _FINISHED_RE.match(line)) and m["task"] == task]
        kept = kept[:ends[-1] + 1] if ends else kept
    return "\n".join(mask_credentials(line) for line in kept[-lines:])


def pipeline_tasks(spec) -> tuple[int | None, dict[str, str]]:
    """How many tasks kfp will run for a compiled PipelineSpec, and each task's display name by
    the name kfp.local logs it under (its component name without `comp-`).

    A ParallelFor over a literal list counts once per item; of the If/Elif/Else branches of one
    `condition-branches` group (every task of that DAG has a trigger condition) one runs. The count
    is None when it depends on run time values: a loop over a task output, a lone `dsl.If`."""
    names: dict[str, str] = {}

    def count(dag) -> int | None:
        sizes, conditional = [], 0
        for task in dag.tasks.values():
            component = spec.components[task.component_ref.name]
            if component.WhichOneof("implementation") == "dag":
                n = count(component.dag)
            else:
                names[task.component_ref.name.removeprefix("comp-")] = task.task_info.name
                n = 1
            if task.HasField("parameter_iterator"):
                raw = task.parameter_iterator.items.raw
                n = n * len(json.loads(raw)) if raw and n is not None else None
            if n is None:
                return None
            sizes.append(n)
            conditional += bool(task.trigger_policy.condition)
        if conditional == 0:
            return sum(sizes)
        return max(sizes) if conditional == len(sizes) else None

    return count(spec.root.dag), names


def _seconds_of_day(m: re.Match) -> float:
    return int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])


class TaskProgress:
    """While the block runs, prints `[ k/N] <task> done in S s` for every task kfp.local logs as
    finished (N: `total`, or no N when unknown). Polls the log file: no pipe that could block the
    writers, and nothing to parse but kfp.local's own start/finish lines."""

    def __init__(self, log_path: Path, terminal: TextIO, total: int | None, names: dict[str, str],
                 interval: float = 0.5):
        self._log_path, self._terminal, self._total, self._names = log_path, terminal, total, names
        self._interval = interval
        self._offset = log_path.stat().st_size  # the log is appended to: only this run's lines
        self._partial = b""
        self._started: dict[str, list[float]] = {}  # task -> start times (ParallelFor: one per item)
        self._reused: set[str] = set()  # tasks that printed reuse.REUSE_MARK
        self.finished = 0
        self.failed: list[str] = []  # kfp.local names of the tasks that finished with another status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dakd-task-progress", daemon=True)

    def __enter__(self) -> TaskProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        sys.stdout.flush()
        sys.stderr.flush()
        self.poll()  # the lines written since the thread's last look (e.g. the exit handler's)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def poll(self) -> None:
        with open(self._log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._line(strip_ansi(raw.decode("utf-8", errors="replace")))

    def _line(self, line: str) -> None:
        if m := _REUSED_RE.match(line):  # printed by the task itself (dakd_core/orchestration/reuse.py)
            self._reused.add(m["task"])
            return
        if m := _STARTED_RE.match(line):
            self._started.setdefault(m["task"], []).append(_seconds_of_day(m))
            return
        m = _FINISHED_RE.match(line)
        if m is None:
            return
        starts = self._started.get(m["task"])
        reused = m["task"] in self._reused
        # modulo a day: a task may run past midnight (the log has times of day only)
        seconds = (_seconds_of_day(m) - starts.pop(0)) % 86400 if starts else None
        self.finished += 1
        width = len(str(self._total or ""))
        count = f"{self.finished:>{width}}/{self._total}" if self._total else str(self.finished)
        if m["status"] == "SUCCESS":
            outcome = "done" if seconds is None else f"done in {seconds:.1f} s"
            outcome += " (reused an earlier run's outputs)" if reused else ""
        else:
            self.failed.append(m["task"])
            outcome = "FAILED" if seconds is None else f"FAILED after {seconds:.1f} s"
        self._terminal.write(f"[{count}] {self.display_name(m['task'])} {outcome}\n")

    def display_name(self, task: str) -> str:
        """The task's display name in the pipeline, else its kfp.local name."""
        return self._names.get(task, task)
