"""Kill -9 helpers: a warm "zygote" process that forks `dakd` CLI runs, and a killer that waits
for a stage's progress marker and then SIGKILLs the run a random moment later.

Why a zygote: starting Python + torch + timm + mlflow costs 10-25 s of wall time on the shared
2-core machines, and a kill test needs three runs per stage (killed, rerun, uninterrupted). The
zygote imports everything once and `fork`s each run from that state. It never runs a torch op
itself, so the children do not inherit a used OpenMP thread pool (forking the pytest process,
which has trained models, could hang the child in libgomp). Every child runs with one torch
thread, so killed, resumed and uninterrupted runs do the same arithmetic and their weights can
be compared with `torch.equal`.

Protocol (one JSON object per line on the zygote's stdin/stdout):
    {"op": "spawn", "argv": [...], "env": {...}, "log": "/path", "hooks": [...]}  ->  {"pid": N}
(`hooks`: modules of tests/faults the child imports before running the CLI, e.g. step_hook)
    {"op": "wait", "pid": N}                                      ->  {"status": exit code, -9 if killed}
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# What the children need, imported once in the zygote before any fork.
PRELOAD = ("torch", "mlflow", "dakd_core.cli", "dakd_core.models", "dakd_core.tracking", "dakd_core.cache",
           "dakd_core.train.pretrain", "dakd_core.train.adapt", "dakd_core.train.distill")


class Zygote:
    """Client side: start the zygote, spawn CLI runs in it, wait for them."""

    def __init__(self, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, **(env or {})},
        )
        ready = self._read()
        assert ready == {"ready": True}, ready

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote exited with status {self.proc.wait()}")
        return json.loads(line)

    def _call(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def spawn(self, argv: list[str], log: Path, env: dict | None = None, hooks: tuple[str, ...] = ()) -> int:
        """Fork `dakd <argv>`; stdout and stderr go to `log`; the child imports the modules `hooks`
        (of tests/faults) first. Returns the child's pid."""
        return self._call({"op": "spawn", "argv": [str(a) for a in argv], "env": env or {}, "log": str(log),
                           "hooks": list(hooks)})["pid"]

    def wait(self, pid: int) -> int:
        """The child's exit code (negative signal number if it was killed)."""
        return self._call({"op": "wait", "pid": pid})["status"]

    def run(self, argv: list[str], log: Path, env: dict | None = None) -> int:
        return self.wait(self.spawn(argv, log, env))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mlflow_env(tmp_path: Path, name: str, template_db: str) -> dict:
    """Environment of a child run logging to its own sqlite MLflow database `{tmp_path}/{name}.db`,
    copied from the migrated template (creating the schema takes seconds)."""
    import shutil

    db = tmp_path / f"{name}.db"
    if not db.exists():
        shutil.copyfile(template_db, db)
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{db}",
            "DAKD_MLFLOW_ARTIFACT_ROOT": (tmp_path / f"{name}-artifacts").as_uri()}


def is_running(pid: int) -> bool:
    """True while `pid` exists and has not exited (a zombie waiting to be reaped has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_after(pid: int, marker, delay: float, timeout: float = 180.0) -> bool:
    """Wait until `marker()` is true (the stage made some progress), sleep `delay` seconds, then
    SIGKILL `pid`. Returns True if the run was still going when the signal was sent (a run that
    finished first was not interrupted, and a test must not count it as a survived kill)."""
    deadline = time.monotonic() + timeout
    while not marker() and is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    alive = is_running(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    return alive


try:
    import pytest

    @pytest.fixture(scope="session")
    def zygote():
        """One warm zygote per test session (import this fixture into a test module to use it)."""
        z = Zygote(env={"DAKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"})
        yield z
        z.close()
except ImportError:  # the zygote process itself does not need pytest
    pass


# --------------------------------------------------------------------------- zygote side


def _child(request: dict) -> None:
    """In the forked child: redirect output, apply the environment, run the CLI, never return."""
    code = 1
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(request["env"])
        import torch

        from dakd_core import storage
        from dakd_core.cli import main

        torch.set_num_threads(1)
        storage.reset_client_cache()  # the env may name another endpoint
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it; a run must not
        for hook in request.get("hooks", []):
            __import__(hook)
        code = main(request["argv"])
    except SystemExit as e:  # argparse errors
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(request)
            reply = {"pid": pid}
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            reply = {"status": os.waitstatus_to_exitcode(status)}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test runner's Ctrl-C is for the test
    _serve()
