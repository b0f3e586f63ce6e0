"""What every component shares: its image, the task decorator (tracking context + timing) and the
conversion of a task's result into KFP artifacts.

Images are chosen when the pipeline is compiled: `DAKD_IMAGE` (GPU stages, the CUDA image) and
`DAKD_CPU_IMAGE` (default: `DAKD_IMAGE` + `-cpu`). The defaults are the release tags built by
`docker/build.py --version-tag`; the committed YAML is compiled with the defaults.
"""

from __future__ import annotations

import functools
import os

from kfp import dsl

from dakd_core import __version__
from dakd_core.orchestration.context import task_context

DEFAULT_IMAGE = f"ghcr.io/dakd/dakd:{__version__}"
IMAGE = os.environ.get("DAKD_IMAGE") or DEFAULT_IMAGE
CPU_IMAGE = os.environ.get("DAKD_CPU_IMAGE") or f"{IMAGE}-cpu"

# The images carry kfp (requirements/kfp.txt): no per-task pip install, ~0.5 s less per task.
gpu_component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
cpu_component = functools.partial(dsl.component, base_image=CPU_IMAGE, install_kfp_package=False)


def run_prefix(store_uri: str, run_name: str) -> str:
    """`{store}/runs/{run_name}`: where the stages of one pipeline run write."""
    return f"{store_uri.rstrip('/')}/runs/{run_name}"


def tracked(stage: str):
    """Decorate a `<stage>_task`: adds the tracking keyword arguments every component passes
    (KFP run id, task name, MLflow parent run and experiment) and records the stage's seconds."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*, store_uri: str, run_name: str, kfp_run_id: str = "local", kfp_task: str = stage,
                  parent_run_id: str = "", experiment: str = "dakd", **kwargs):
            timings = f"{run_prefix(store_uri, run_name)}/timings"
            with task_context(kfp_run_id, kfp_task, parent_run_id, experiment, timings_uri=timings):
                return fn(store_uri=store_uri, run_name=run_name, experiment=experiment, **kwargs)

        return inner

    return wrap


def log_metrics(artifact, metrics: dict) -> None:
    """Numeric scalars of a stage's metrics into a KFP Metrics artifact (others are skipped)."""
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            artifact.log_metric(key, float(value))
