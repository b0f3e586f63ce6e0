"""One MLflow parent run per pipeline run.

The pipeline's first task opens it (tagged with the KFP run id) and its exit handler closes it with
the pipeline's final state. The exit task cannot take outputs of other tasks (a KFP rule), so it
finds the parent run by that tag. When the platform injects `MLFLOW_RUN_ID`, that run is the
parent and is left for the platform to close.
"""

from __future__ import annotations

import os

from dakd_core.errors import DakdError

KFP_RUN_TAG = "dakd.kfp_run_id"
PARENT_TAG = "dakd.pipeline_parent"


def _client():
    import mlflow

    from dakd_core.tracking import tracking_uri

    return mlflow.MlflowClient(tracking_uri())


def open_parent_run(experiment: str, kfp_run_id: str, run_name: str) -> str:
    """The parent run id: MLFLOW_RUN_ID if the platform set it, else a new RUNNING run."""
    injected = os.environ.get("MLFLOW_RUN_ID")
    if injected:
        return injected
    from dakd_core.orchestration.run_output import mask_credentials
    from dakd_core.tracking import ensure_experiment, tracking_uri

    client = _client()
    try:
        run = client.create_run(
            ensure_experiment(experiment),
            run_name=f"pipeline-{run_name}",
            tags={KFP_RUN_TAG: kfp_run_id, PARENT_TAG: "true", "dakd.run_name": run_name},
        )
    except DakdError:
        raise
    except Exception as e:  # unreachable server, bad URI: name it, without a user:password@ part
        raise DakdError(f"cannot open the MLflow parent run at {mask_credentials(tracking_uri())}: {e}") from None
    return run.info.run_id


def close_parent_run(experiment: str, kfp_run_id: str, state: str) -> str | None:
    """Mark the parent run of `kfp_run_id` FINISHED or FAILED; returns its id (None: none found)."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return None
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}' and tags.`{PARENT_TAG}` = 'true'",
    )
    status = "FINISHED" if state == "SUCCEEDED" else "FAILED"
    for run in runs:
        client.set_terminated(run.info.run_id, status=status)
    return runs[0].info.run_id if runs else None
