"""`dakd run`: the SAME pipeline function, executed by kfp.local's SubprocessRunner on this machine.

1. the built-in synthetic domain pair is generated (what `dakd synth` writes) under {out}/data;
2. tasks get a file:// store under {out}/store and a sqlite MLflow database {out}/mlflow.db
   through the environment (the cluster gives them the same variables from secrets);
3. kfp.local runs the DAG: each task is a Python subprocess of this virtualenv (use_venv=False,
   no per-task pip install); Kubernetes settings are ignored with a warning;
4. the results are read back from the store (evaluation metrics, promotion outcome, per-task
   seconds) and summarised: the final table plus the measured orchestration overhead.

kfp is imported inside `run_local` only, so `import dakd_core` never pulls it in.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dakd_core.errors import DakdError, StoreError
from dakd_core.orchestration.params import RunConfig
from dakd_core.orchestration.tasks.common import run_prefix

# Rows of the final table: (evaluation entry written by components/evaluate.py, label printed)
TABLE_ROWS = [
    ("teacher source-only", "teacher source-only"),
    ("teacher adapted", "teacher adapted"),
    ("student source-only", "student source-only"),
    ("student adapted", "student adapted"),
    ("student distilled", "student distilled"),
    ("student distilled ONNX FP16", "student exported ONNX FP16"),
]


@dataclass
class LocalRunResult:
    run_name: str
    store_uri: str
    tracking_uri: str
    models: dict  # evaluate metrics.json "models"
    resolution: tuple[int, int]
    promotion: dict
    wall_seconds: float
    task_seconds: dict = field(default_factory=dict)  # stage calls: seconds inside the stage
    num_tasks: int = 0  # every task kfp.local ran (stages + start/finish/branch helpers)

    @property
    def overhead_seconds(self) -> float:
        return self.wall_seconds - sum(self.task_seconds.values())


def prepare_data(cfg: RunConfig, out: Path) -> tuple[str, str]:
    """Generate the synthetic pair (idempotent for the same settings); returns the two roots."""
    from dakd_core.data.synth import generate

    loc = cfg.local
    size = (loc.synth_width, loc.synth_height)
    source, target = out / "data" / "source", out / "data" / "target"
    generate(source, "source", loc.synth_train, size=size, seed=cfg.params.seed, split="train")
    look = dict(weather=loc.weather, shift=loc.synth_shift, target_layout=loc.synth_target_layout)
    generate(target, "target", loc.synth_train, size=size, seed=cfg.params.seed, split="train", **look)
    generate(target, "target", loc.synth_val, size=size, seed=cfg.params.seed, split="val", **look)
    return str(source), str(target)


def _local_env(out: Path) -> dict[str, str]:
    """Environment the task subprocesses inherit: where MLflow lives, quiet bars, one BLAS pool."""
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "DAKD_NO_PROGRESS": os.environ.get("DAKD_NO_PROGRESS", "1"),
        "DAKD_SYSTEM_METRICS": os.environ.get("DAKD_SYSTEM_METRICS", "0"),
        "DAKD_LOCAL_RUN": "1",  # read by pipelines/dakd_pipeline.py: no retries locally
    }


def run_local(cfg: RunConfig, run_name: str | None = None) -> LocalRunResult:
    from kfp import local

    from dakd_core.storage import open_store

    out = Path(cfg.local.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = cfg.params.model_copy()
    if cfg.local.synthetic:
        params.source_format, params.target_format = "gta5", ("acdc" if cfg.local.weather else "cityscapes")
        params.source_uri, params.target_uri = prepare_data(cfg, out)
    params.store_uri = (out / "store").as_uri()
    params.run_name = run_name or cfg.params.run_name or datetime.now().strftime("local-%Y%m%d-%H%M%S")
    run_prefix(params.store_uri, params.run_name)  # a bad --run-name fails here, before any task runs
    env = _local_env(out)
    os.environ.update(env)

    from pipelines.dakd_pipeline import PIPELINE_NAME, dakd_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"), raise_on_error=True)
    start = time.perf_counter()
    try:
        dakd_pipeline(**params.model_dump())
    except RuntimeError as e:  # kfp.local: "Pipeline ... finished with status FAILURE" / task failures
        raise DakdError(f"local pipeline run '{params.run_name}' failed: {e} (task logs above; outputs in {out / 'kfp'})") from None
    wall = time.perf_counter() - start
    # every task kfp.local ran (executor_output.json per task dir), for the per-task overhead
    runs = sorted((out / "kfp").glob(f"{PIPELINE_NAME}-*"), key=lambda p: p.stat().st_mtime)
    num_tasks = len(list(runs[-1].rglob("executor_output.json"))) if runs else 0

    run = open_store(params.store_uri).child(f"runs/{params.run_name}")
    try:
        metrics = json.loads(run.get_bytes("evaluate/metrics.json"))
        promotion = json.loads(run.get_bytes("promote/outcome.json"))
    except StoreError as e:
        raise DakdError(f"the pipeline finished but its results are missing: {e}") from None
    timings = {}
    for key in run.list("timings/"):
        record = json.loads(run.get_bytes(key))
        timings[record["task"]] = float(record["seconds"])
    return LocalRunResult(params.run_name, params.store_uri, env["MLFLOW_TRACKING_URI"], metrics["models"],
                          (params.eval_resize_h, params.eval_resize_w), promotion, wall, timings, num_tasks)


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
    for key, label in TABLE_ROWS:
        m = res.models.get(key)
        if m is None:
            continue
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
        f"MLflow: {res.tracking_uri}    store: {res.store_uri}/runs/{res.run_name}",
        f"time: {res.wall_seconds:.1f} s wall, {sum(res.task_seconds.values()):.1f} s inside {len(res.task_seconds)} "
        f"stage calls; orchestration overhead {res.overhead_seconds:.1f} s over {res.num_tasks} tasks "
        f"({res.overhead_seconds / max(1, res.num_tasks):.2f} s per task: process start, imports, KFP executor)",
    ]
    return "\n".join(lines)
