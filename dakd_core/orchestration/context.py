"""What a pipeline task sets before calling a stage: the KFP identity and the MLflow parent run.

`dakd_core.tracking` reads these variables: every stage's MLflow run is tagged with the KFP run id
and task name and nested under the pipeline's parent run. The platform may inject `MLFLOW_RUN_ID`
(the parent run it created); it then wins over the parent run created by the pipeline's first task.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

from dakd_core.storage import write_bytes
from dakd_core.tracking import ENV_RUN_LABEL, ENV_RUN_TAGS

ENV_KFP_RUN_ID = "DAKD_KFP_RUN_ID"
ENV_KFP_TASK = "DAKD_KFP_TASK"
ENV_PARENT_RUN_ID = "DAKD_PARENT_RUN_ID"
# `dakd run` names its run (--run-name) through the environment the task processes inherit: the
# pipeline has no run-name parameter (a KFP run has its own name, run_name_for).
ENV_RUN_NAME = "DAKD_RUN_NAME"


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """Set environment variables for the duration of the block; restore the previous values after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def task_context(kfp_run_id: str, kfp_task: str, parent_run_id: str = "", experiment: str = "",
                 timings_uri: str = "", run_label: str = "", run_tags: dict | None = None):
    """Set the tracking environment for one stage call; restore the previous values after.

    `run_label` and `run_tags` describe the stage runs this task opens (`dakd_core.tracking`
    names them `<stage>-<run_label>` and adds the tags): the stage code itself (the train loops)
    only knows its stage, not whether it trains the teacher or the student.

    With `timings_uri` (a store prefix), the seconds the stage itself took are written to
    `{timings_uri}/{kfp_task}.json`: `dakd run` subtracts them from the wall time to report the
    orchestration overhead (process start, imports, KFP executor)."""
    values = {ENV_KFP_RUN_ID: kfp_run_id, ENV_KFP_TASK: kfp_task}
    if parent_run_id:
        values[ENV_PARENT_RUN_ID] = parent_run_id
    if experiment:
        values["MLFLOW_EXPERIMENT_NAME"] = experiment
    # Always set (possibly empty): a label left by an earlier task in this process must not name
    # this task's runs.
    values[ENV_RUN_LABEL] = run_label
    values[ENV_RUN_TAGS] = json.dumps(run_tags or {}, sort_keys=True)
    with environ(values):
        start = time.perf_counter()
        yield
        if timings_uri:
            record = {"task": kfp_task, "seconds": round(time.perf_counter() - start, 3)}
            write_bytes(f"{timings_uri.rstrip('/')}/{kfp_task}.json", json.dumps(record).encode())


def run_name_for(kfp_run_name: str, kfp_run_id: str) -> str:
    """The run-scoped output folder name and MLflow parent run name: `dakd run`'s own
    (DAKD_RUN_NAME, its --run-name), else KFP's run name as one store key segment (letters, digits,
    '.', '_', '-') followed by the run id's first 8 characters (two KFP runs may share a name)."""
    local = os.environ.get(ENV_RUN_NAME, "")
    if local:
        return local
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", kfp_run_name).strip("-._")[:100]
    return f"{readable}-{kfp_run_id[:8]}" if readable else f"kfp-{kfp_run_id}"
