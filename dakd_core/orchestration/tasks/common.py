"""What every task shares: the tracking decorator, the run prefix, metrics conversion."""

from __future__ import annotations

import functools
import gc
import os
import re
from collections.abc import Callable

from dakd_core.errors import ConfigError
from dakd_core.orchestration.context import task_context
from dakd_core.orchestration.params import RUN_NAME_PATTERN


def hw(size: list) -> tuple[int, int]:
    """An (H, W) list parameter as ints: KFP passes list parameters as JSON, ints may arrive as floats or their strings."""
    h, w = (int(float(v)) for v in size)
    return h, w


def run_prefix(store_uri: str, run_name: str) -> str:
    """`{store}/runs/{run_name}`: where the stages of one pipeline run write."""
    # The name comes from a UI text box: refuse what would escape runs/ or nest ("a/../../x").
    if not re.fullmatch(RUN_NAME_PATTERN, run_name) or not run_name:
        raise ConfigError(f"run_name {run_name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return f"{store_uri.rstrip('/')}/runs/{run_name}"


def run_identity(role: str, method: str = "", paradigm: str = "", label: str = "") -> tuple[str, dict]:
    """(label, tags) of the MLflow runs of one task: named `<stage>-<label>` (label: the role
    unless given) and tagged dakd.role / dakd.method / dakd.paradigm (empty ones left out)."""
    tags = {"dakd.role": role, "dakd.method": method, "dakd.paradigm": paradigm}
    return label or role, {k: v for k, v in tags.items() if v}


def tracked(stage: str, identity: Callable[[dict], tuple[str, dict]] | None = None):
    """Decorate a `<stage>_task`: adds the tracking keyword arguments every component passes
    (KFP run id, task name, MLflow parent run and experiment) and records the stage's seconds
    under {run}/timings/ (`dakd run` reports the orchestration overhead from them).
    `identity(task kwargs) -> (label, tags)` (see `run_identity`) names and tags the task's
    stage runs."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*, store_uri: str, run_name: str, kfp_run_id: str = "local", kfp_task: str = stage,
                  parent_run_id: str = "", experiment: str = "dakd", **kwargs):
            timings = f"{run_prefix(store_uri, run_name)}/timings"
            label, tags = identity(kwargs) if identity else ("", {})
            try:
                with task_context(kfp_run_id, kfp_task, parent_run_id, experiment, timings_uri=timings,
                                  run_label=label, run_tags=tags):
                    return fn(store_uri=store_uri, run_name=run_name, experiment=experiment, **kwargs)
            finally:
                freeze_for_exit()

        return inner

    return wrap


def freeze_for_exit() -> None:
    """In a KFP task process (the executor sets _KFP_RUNTIME=true, on a cluster and in kfp.local),
    move every object alive now to the collector's permanent generation. The process ends right
    after the stage: the garbage collections of interpreter shutdown would otherwise walk the
    hundreds of thousands of objects torch and MLflow created (a process that imported both and
    logged one MLflow run spent 1.7 s of CPU shutting down, 0.2 s frozen; benchmarks/
    bench_task_overhead.py times a task process both ways). Nothing is skipped: atexit handlers
    and the exit status stay as they were. Elsewhere (tests, the CLI calling a task in process) the
    objects would stay uncollectable, so nothing is frozen there."""
    if os.environ.get("_KFP_RUNTIME") == "true":
        gc.freeze()


def log_metrics(artifact, metrics: dict) -> None:
    """Numeric scalars of a stage's metrics into a KFP Metrics artifact (others are skipped)."""
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            artifact.log_metric(key, float(value))
