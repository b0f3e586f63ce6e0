"""What a pipeline task process costs around its stage, with and without the exit-time GC freeze.

Each KFP task (on a cluster and under `dakd run`'s kfp.local) is one Python process: start, the
KFP executor, the stage (which imports torch and MLflow and opens its MLflow run), exit. This
runs that life cycle for a minimal stage (build deeplabv2_tiny, one MLflow run with a metric, in
a sqlite database) through the same `tracked` decorator the real tasks use, alternately as a KFP
task process (`_KFP_RUNTIME=true`: `freeze_for_exit` freezes the heap before exit) and as a plain
process (no freeze: what every task did before), and reports per process the CPU seconds (the
measure that a shared machine's queue does not inflate) and the wall seconds.

    .venv/bin/python benchmarks/bench_task_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from dakd_core.bench.clock import Stopwatch
from dakd_core.bench.scratch import scratch_dir

# The child: a tracked no-op stage with a real stage's imports and MLflow run.
CHILD = """
import sys
from dakd_core.orchestration.tasks.common import tracked

@tracked("bench")
def stage(*, store_uri, run_name, experiment):
    import mlflow
    import torch  # noqa: F401
    from dakd_core.models import create_model
    from dakd_core.tracking import stage_run
    with stage_run("bench", params={"model": "deeplabv2_tiny"}):
        create_model("deeplabv2_tiny")
        mlflow.log_metric("x", 1.0)

stage(store_uri=sys.argv[1], run_name="bench", kfp_task="bench", experiment="bench")
"""


def task_process(store_uri: str, env: dict[str, str]) -> Stopwatch:
    with Stopwatch() as sw:
        subprocess.run([sys.executable, "-c", CHILD, store_uri], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return sw


def measure(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="task processes of each kind, alternated")
    args = ap.parse_args(argv)
    with scratch_dir("dakd-bench-task-") as tmp:
        runs = _task_runs(tmp, args.repeats)
    result = {kind: {"cpu_s": statistics.median(sw.cpu for sw in sws), "wall_s": statistics.median(sw.wall for sw in sws)}
              for kind, sws in runs.items()}
    print(f"task process, median of {args.repeats}: CPU s, wall s")
    for kind, r in result.items():
        print(f"  {kind:<18} {r['cpu_s']:6.2f} {r['wall_s']:8.2f}")
    saved = result["plain exit"]["cpu_s"] - result["KFP task, frozen"]["cpu_s"]
    print(f"  CPU saved per task by the freeze: {saved:.2f} s")
    return result


def _task_runs(tmp: Path, repeats: int) -> dict[str, list[Stopwatch]]:
    """`repeats` task processes of each kind, alternated, with the store and MLflow DB under `tmp`."""
    base = {k: v for k, v in os.environ.items() if k not in ("_KFP_RUNTIME", "MLFLOW_RUN_ID", "DAKD_PARENT_RUN_ID")}
    base.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", MLFLOW_DISABLE_TELEMETRY="true",
                DAKD_SYSTEM_METRICS="0", DAKD_NO_PROGRESS="1")
    kinds = {"plain exit": base, "KFP task, frozen": dict(base, _KFP_RUNTIME="true")}
    store = (tmp / "store").as_uri()
    task_process(store, base)  # creates the MLflow database (its migrations are no task's cost)
    runs: dict[str, list[Stopwatch]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for kind, env in kinds.items():
            runs[kind].append(task_process(store, env))
    return runs


def main(argv=None) -> int:
    measure(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
