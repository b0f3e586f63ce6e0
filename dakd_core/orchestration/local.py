"""`dakd run`: the SAME pipeline function, executed by kfp.local's SubprocessRunner on this machine.

1. the built-in synthetic domain pair is generated (what `dakd synth` writes) under {out}/data;
2. tasks get a file:// store under {out}/store and, through the environment, the MLflow tracking
   URI: MLFLOW_TRACKING_URI when it is set, else a sqlite database {out}/mlflow.db (the cluster
   gives them the same variables from secrets);
3. kfp.local runs the DAG: each task is a Python subprocess of this virtualenv (use_venv=False,
   no per-task pip install); Kubernetes settings are ignored with a warning. All it prints goes to
   {out}/logs/{run_name}.log; the terminal gets one line per finished task (run_output.py);
4. the results are read back from the store (evaluation metrics, promotion outcome, per-task
   seconds), written to {out}/results.json and summarised: the final table plus the measured
   orchestration overhead.

kfp is imported inside `run_local` only, so `import dakd_core` never pulls it in.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dakd_core.errors import ConfigError, DakdError, StoreError
from dakd_core.orchestration.context import ENV_RUN_NAME, environ
from dakd_core.orchestration.local_compat import artifact_oneof
from dakd_core.orchestration.params import RunConfig, form_values
from dakd_core.orchestration.run_output import (
    kfp_local_shared_state,
    log_tail,
    mask_credentials,
    output_to_log,
    pipeline_tasks,
    strip_ansi,
    TaskProgress,
)
from dakd_core.orchestration.pins import resolve
from dakd_core.orchestration.reuse import ENV_REUSE, forget_reused, reused_tasks
from dakd_core.orchestration.tasks.common import ENV_TIMINGS_URI, run_prefix

if TYPE_CHECKING:
    from dakd_core.orchestration.docker_runner import DockerTasks

# Rows of the final table: (evaluation entry written by components/evaluate.py, label printed,
# key in results.json)
TABLE_ROWS = [
    ("teacher source-only", "teacher source-only", "teacher_source_only"),
    ("teacher adapted", "teacher adapted", "teacher_adapted"),
    ("student source-only", "student source-only", "student_source_only"),
    ("student adapted", "student adapted", "student_adapted"),
    ("student distilled", "student distilled", "student_distilled"),
    ("student distilled ONNX FP16", "student exported ONNX FP16", "student_exported"),
]


@dataclass
class LocalRunResult:
    run_name: str
    store_uri: str
    tracking_uri: str  # as the tasks got it: print it through mask_credentials
    tracking_from_env: bool  # MLFLOW_TRACKING_URI was set, else the run's own sqlite database
    log_path: str
    results_path: str
    models: dict  # evaluate metrics.json "models"
    resolution: tuple[int, int]
    promotion: dict
    wall_seconds: float
    task_seconds: dict = field(default_factory=dict)  # stage calls: seconds inside the stage
    num_tasks: int = 0  # every task kfp.local ran (stages + start/finish/branch helpers)
    reused: list = field(default_factory=list)  # tasks that returned an earlier run's outputs (reuse.py)

    @property
    def overhead_seconds(self) -> float:
        return self.wall_seconds - sum(self.task_seconds.values())


def prepare_data(cfg: RunConfig, out: Path) -> tuple[str, str]:
    """Generate the synthetic pair (idempotent for the same settings); returns the two roots."""
    from dakd_core.data.synth import generate

    loc = cfg.local
    size = (loc.synth_width, loc.synth_height)
    source, target = out / "data" / "source", out / "data" / "target"
    generate(source, "source", loc.synth_train, size=size, seed=cfg.params.train_seed, split="train")
    look = dict(weather=loc.weather, shift=loc.synth_shift, target_layout=loc.synth_target_layout)
    generate(target, "target", loc.synth_train, size=size, seed=cfg.params.train_seed, split="train", **look)
    generate(target, "target", loc.synth_val, size=size, seed=cfg.params.train_seed, split="val", **look)
    return str(source), str(target)


def tracking_uri_for(out: Path) -> tuple[str, bool]:
    """(MLflow tracking URI for the tasks, whether it came from the environment):
    MLFLOW_TRACKING_URI when set (a tracking server or a shared database), else {out}/mlflow.db."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        return from_env, True
    return f"sqlite:///{out / 'mlflow.db'}", False


def _local_env(tracking_uri: str, timings_uri: str, run_name: str, reuse: bool) -> dict[str, str]:
    """Environment the task subprocesses inherit: where MLflow lives, where each task records its
    seconds (the overhead report), the run's name (the pipeline has no such parameter), whether a
    task may return an earlier run's outputs (reuse.py), quiet bars. OpenMP keeps its default
    (spinning) wait policy: kfp.local runs one task at a time here (the cache shards too, pipelines/dakd_pipeline.py), and
    PASSIVE made a two-thread training step 1.8x slower (`OMP_WAIT_POLICY=PASSIVE python
    benchmarks/bench_layout.py --threads 2`: swiftnet_tiny 0.0956 s against 0.0523 s)."""
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        ENV_TIMINGS_URI: timings_uri,
        ENV_RUN_NAME: run_name,
        ENV_REUSE: "1" if reuse else "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "DAKD_NO_PROGRESS": os.environ.get("DAKD_NO_PROGRESS", "1"),
        "DAKD_SYSTEM_METRICS": os.environ.get("DAKD_SYSTEM_METRICS", "0"),
        "DAKD_LOCAL_RUN": "1",  # read by pipelines/dakd_pipeline.py: no retries, shards one at a time
    }


def run_local(cfg: RunConfig, run_name: str | None = None, reuse: bool = True, store_uri: str | None = None,
              docker: "DockerTasks | None" = None) -> LocalRunResult:
    """Run the pipeline; kfp.local's and the tasks' output go to {out}/logs/{run_name}.log, the
    terminal (stdout) gets the log's path, one line per finished task, and on failure the log's
    last lines inside the DakdError. store_uri: the object store (default {out}/store); docker:
    run every task in its container (docker_runner.py) instead of a subprocess of this venv."""
    from contextlib import nullcontext

    from kfp import local

    from dakd_core.storage import open_store, read_bytes

    out = Path(cfg.local.out_dir).resolve()
    run_name = run_name or datetime.now().strftime("local-%Y%m%d-%H%M%S")
    # A bad --run-name fails here (ConfigError naming it), before anything is created or assigned.
    store = store_uri or (out / "store").as_uri()
    try:  # an unusable --store is refused before anything is created
        open_store(store)
    except StoreError as e:
        raise ConfigError(f"--store: {store!r}: {e}") from None
    run_prefix(store, run_name)
    params = cfg.params.model_copy()
    params.data_store_uri = store
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "logs" / f"{run_name}.log"
    tracking, tracking_from_env = tracking_uri_for(out)
    print(f"dakd run {run_name}: output of kfp.local and of every task (executor records, warnings,"
          f" task logs) goes to {log_path}", flush=True)
    print(f"dakd run {run_name}: MLflow {describe_tracking(tracking, tracking_from_env)}", flush=True)

    # The environment is restored afterwards: a later run in this process must not take this
    # run's database for a user-set MLFLOW_TRACKING_URI.
    timings_uri = f"{run_prefix(params.data_store_uri, run_name)}/timings"
    forget_reused(open_store(params.data_store_uri).child(f"runs/{run_name}"))
    with environ(_local_env(tracking, timings_uri, run_name, reuse) | (docker.environment() if docker else {})), \
            output_to_log(log_path) as terminal:
        print(f"==== dakd run {run_name} ({datetime.now().isoformat(timespec='seconds')}) ====")
        log_start = log_path.stat().st_size
        if cfg.local.synthetic:
            t0 = time.perf_counter()
            params.data_source_format = "gta5"
            params.data_target_format = "acdc" if cfg.local.weather else "cityscapes"
            params.data_source_uri, params.data_target_uri = prepare_data(cfg, out)
            terminal.write(f"synthetic domain pair ready in {time.perf_counter() - t0:.1f} s: {out / 'data'}\n")

        # imported with DAKD_LOCAL_RUN set: the pipeline then compiles without retries
        from pipelines.dakd_pipeline import PIPELINE_NAME, dakd_pipeline

        total, names = pipeline_tasks(dakd_pipeline.pipeline_spec)
        runner = docker.kfp_runner() if docker else local.SubprocessRunner(use_venv=False)
        local.init(runner=runner, pipeline_root=str(out / "kfp"), raise_on_error=True)
        containers = docker.running(docker.host_folders(out, params.data_store_uri, tracking, (
            params.data_source_uri, params.data_target_uri), os.environ)) if docker else nullcontext()
        failure = None
        progress = TaskProgress(log_path, terminal, total, names)
        start = time.perf_counter()
        try:
            with kfp_local_shared_state(), artifact_oneof(), progress, containers:
                dakd_pipeline(**form_values(params))
        except RuntimeError as e:  # kfp.local: "Pipeline ... finished with status FAILURE" / task failures
            failure = strip_ansi(str(e))
        wall = time.perf_counter() - start
    if failure is not None:
        failed = progress.failed[0] if progress.failed else None
        whose = f"the output of task '{progress.display_name(failed)}'" if failed else "the log"
        raise DakdError(f"local pipeline run '{run_name}' failed: {failure}\n"
                        f"full log: {log_path}; the last lines of {whose}:\n{log_tail(log_path, log_start, failed)}")
    # every task kfp.local ran (executor_output.json per task dir), for the per-task overhead
    runs = sorted((out / "kfp").glob(f"{PIPELINE_NAME}-*"), key=lambda p: p.stat().st_mtime)
    num_tasks = len(list(runs[-1].rglob("executor_output.json"))) if runs else 0

    run = open_store(params.data_store_uri).child(f"runs/{run_name}")
    try:
        # register's record of the run's stage outputs: evaluate's folder is content-addressed
        metrics = json.loads(read_bytes(resolve(json.loads(run.get_bytes("stages.json"))["evaluate"])))
        promotion = json.loads(run.get_bytes("promote/outcome.json"))
    except StoreError as e:
        raise DakdError(f"the pipeline finished but its results are missing: {e}") from None
    missing = [key for key, _, _ in TABLE_ROWS if key not in metrics["models"]]
    if missing:
        raise DakdError(f"the evaluation metrics of {run.url('stages.json')} have no entry for {missing}")
    timings = {}
    for key in run.list("timings/"):
        record = json.loads(run.get_bytes(key))
        timings[record["task"]] = float(record["seconds"])
    res = LocalRunResult(run_name, params.data_store_uri, tracking, tracking_from_env, str(log_path),
                         str(out / "results.json"), metrics["models"], (params.eval_resize_h, params.eval_resize_w),
                         promotion, wall, timings, num_tasks, reused_tasks(run))
    # put_bytes writes a temporary file and renames it: a reader never sees half a results.json
    open_store(str(out)).put_bytes("results.json", json.dumps(results_document(res), indent=2).encode())
    return res


def latency_ms(model_metrics: dict, resolution: tuple[int, int]) -> float | None:
    """Milliseconds per image at the evaluation resolution, from evaluate's measured throughput."""
    mpx_s = model_metrics.get("throughput_mpx_s")
    if not mpx_s:
        return None
    return resolution[0] * resolution[1] / 1e6 / mpx_s * 1e3


def format_summary(res: LocalRunResult) -> str:
    h, w = res.resolution
    lines = [
        f"dakd run {res.run_name}: target val mIoU, parameters, latency (ms/image at {w}x{h}, this machine)",
        "",
        f"| {'model':<30} | {'mIoU %':>7} | {'params':>10} | {'latency ms':>10} |",
        f"|{'-' * 32}|{'-' * 9}|{'-' * 12}|{'-' * 12}|",
    ]
    for key, label, _ in TABLE_ROWS:
        m = res.models[key]
        lat = latency_ms(m, res.resolution)
        params = m.get("num_parameters")
        lines.append(
            f"| {label:<30} | {100 * m['miou']:>7.2f} | {params if params is not None else '-':>10} | "
            f"{'-' if lat is None else f'{lat:.1f}':>10} |"
        )
    p = res.promotion
    lines += [
        "",
        f"registry: {p['name']} v{p['challenger']} {p['decision']}"
        f" (champion now: {('v' + str(p['champion'])) if p.get('champion') else 'none'}) - {p['reason']}",
        f"MLflow: {describe_tracking(res.tracking_uri, res.tracking_from_env)}",
        f"store: {res.store_uri}/runs/{res.run_name}",
        f"time: {res.wall_seconds:.1f} s wall, {sum(res.task_seconds.values()):.1f} s inside {len(res.task_seconds)} "
        f"stage calls; orchestration overhead {res.overhead_seconds:.1f} s over {res.num_tasks} tasks "
        f"({res.overhead_seconds / max(1, res.num_tasks):.2f} s per task: process start, imports, KFP executor)",
        *([f"reused: {len(res.reused)} tasks returned an earlier run's outputs (same settings, inputs and code; "
           f"--no-reuse runs them again): {_counted(res.reused)}"] if res.reused else []),
        f"results: {res.results_path}",
        f"log: {res.log_path}",
    ]
    return "\n".join(lines)


def _counted(names: list[str]) -> str:
    """'a, b x4, c': each name once, with its count when it repeats (ParallelFor items)."""
    counts = Counter(names)
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items())


def describe_tracking(uri: str, from_env: bool) -> str:
    """The tracking URI as it may be printed (credentials masked) and where it came from."""
    source = "from MLFLOW_TRACKING_URI" if from_env else "default; set MLFLOW_TRACKING_URI to use another"
    return f"{mask_credentials(uri)} ({source})"


def results_document(res: LocalRunResult) -> dict:
    """The content of {out}/results.json: one row per table row (mIoU as a fraction), the wall
    time of the pipeline, the run name and the registry's promotion outcome."""
    rows = {}
    for key, _, name in TABLE_ROWS:
        m = res.models[key]
        miou = float(m["miou"])
        rows[name] = {
            "miou": miou if math.isfinite(miou) else None,  # NaN (no class present) is not JSON
            "num_parameters": m.get("num_parameters"),
            "latency_ms": latency_ms(m, res.resolution),
        }
    return {"rows": rows, "wall_seconds": res.wall_seconds, "run_name": res.run_name, "registry": res.promotion}
