"""What a pipeline task checks about its environment before any work: that it logs to the
pipeline's MLflow store and writes to a store it can write.

A task whose pod or container lacks MLFLOW_TRACKING_URI would log to a database of its own inside
the container (dakd_core.tracking.tracking_uri's default), which no other task sees: every stage
would train, and the pipeline would fail only at `register`, whose parent run is not there. So:

- `start` (the first task) needs MLFLOW_TRACKING_URI, the object store (`data_store_uri`) must
  take a write, and the experiment's artifact store too (dakd_core.tracking.check_artifact_store,
  reached through ensure_experiment) before the parent run opens;
- every other task that logs to MLflow (its stage settings' `log_mlflow` is not false) needs
  MLFLOW_TRACKING_URI. Cached tasks check no more than that: they take no per-run value (KFP's
  cache, tasks/common.py) and a reused task never imports MLflow (reuse.py); their stage run
  checks its artifact store when it opens, before training (ensure_experiment);
- an uncached task given the parent run (ingest, register, promote) finds it at its tracking
  URI: ingest runs right after `start`, so tasks that each see a store of their own (a
  container-local sqlite path) fail there, before any GPU task.

Failures are SetupError (exit 2 from the CLI), never recorded as deterministic (a retry after the
platform's secrets are fixed runs).
"""

from __future__ import annotations

import json
import os
import uuid

from dakd_core.errors import SetupError, StoreError

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
MLFLOW_SECRET_HINT = ("set it for every task: on the cluster from the secret dakd-mlflow (k8s/secrets/README.md, "
                      "docs/cluster.md); `dakd run` sets it itself, and `--runner docker` passes the run's MLFLOW_* "
                      "variables into each container")
S3_SECRET_HINT = ("the tasks read AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: on the cluster from "
                  "the secret dakd-s3 (k8s/secrets/README.md), the bucket made by the Job of k8s/object-store")


def logs_to_mlflow(task_inputs: dict) -> bool:
    """Whether a task's stage opens MLflow runs: unless its settings (the `config` JSON from
    `start`) turn `log_mlflow` off."""
    try:
        settings = json.loads(task_inputs.get("config") or "{}")
    except (TypeError, ValueError):
        return True  # the stage itself names a bad config; the check does not guess
    return not (isinstance(settings, dict) and settings.get("log_mlflow") is False)


def require_tracking_uri(task: str) -> str:
    """MLFLOW_TRACKING_URI, or a SetupError naming it when this task's environment lacks it."""
    uri = os.environ.get(ENV_TRACKING_URI, "").strip()
    if not uri:
        raise SetupError(f"task {task}: {ENV_TRACKING_URI} is not set, so MLflow would log to a store inside this "
                         "task's container that no other task sees (and the pipeline would fail only at register, "
                         f"after the training): {MLFLOW_SECRET_HINT}")
    return uri


def require_parent_run(task: str, parent_run_id: str, uri: str) -> None:
    """SetupError when the pipeline's parent run (the one `start` opened, or the platform's
    MLFLOW_RUN_ID, which `start` hands on as the parent) is not at this task's tracking URI `uri`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from dakd_core.tracking import check_reachable, redact_text

    check_reachable(uri)
    try:
        mlflow.MlflowClient(uri).get_run(parent_run_id)
    except MlflowException as e:
        raise SetupError(redact_text(
            f"task {task}: the pipeline's MLflow parent run {parent_run_id!r} is not at {ENV_TRACKING_URI}={uri} as "
            f"this task sees it ({e.message[:200]}): the tasks do not share one tracking store (a database inside each "
            f"container?); give every task the same {ENV_TRACKING_URI}, a server or a shared database: "
            f"{MLFLOW_SECRET_HINT}")) from None


def check_task(task: str, task_inputs: dict, parent_run_id: str) -> None:
    """The checks of a stage task (see the module docstring), before it does anything."""
    if not logs_to_mlflow(task_inputs):
        return
    uri = require_tracking_uri(task)
    if parent_run_id:  # uncached tasks only: cached ones are given no parent run
        require_parent_run(task, parent_run_id, uri)


def check_store(store_uri: str, run_prefix: str) -> None:
    """SetupError naming `data_store_uri` when one small object cannot be written under the run's
    prefix of the store (and deleted again): a wrong credential, endpoint or bucket fails the
    first task, not the first task that writes."""
    from dakd_core.storage import open_store

    key = f".dakd-write-probe-{uuid.uuid4().hex}"
    try:
        store = open_store(run_prefix)
        store.put_bytes(key, b"dakd: store write probe\n")
        store.delete(key)
    except StoreError as e:
        hint = S3_SECRET_HINT if store_uri.startswith("s3://") else "check that the path exists and is writable"
        raise SetupError(f"field 'data_store_uri': the store {store_uri} cannot be written ({e}): {hint}") from None
