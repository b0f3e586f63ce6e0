"""One MLflow parent run per pipeline run.

The pipeline's first task opens it (tagged with the KFP run id) and its exit handler closes it with
the pipeline's final state. The exit task cannot take outputs of other tasks (a KFP rule), so it
finds the parent run by that tag. When the platform injects `MLFLOW_RUN_ID`, that run is the
parent and is left for the platform to close.

What it records: every pipeline parameter as a param (redacted like stage params) and the tags
stage runs inherit (`dakd.dataset_pair`, `dakd.paradigm`, `dakd.run_name`) when it opens; the
headline metrics (teacher / adapted / distilled student mIoU and the distillation gain) when the
evaluation task has them; the promotion decision from the promote task.
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


def open_parent_run(experiment: str, kfp_run_id: str, run_name: str, params: dict | None = None) -> str:
    """The parent run id: MLFLOW_RUN_ID if the platform set it, else a new RUNNING run. `params`
    (the pipeline parameters) are logged on it either way."""
    from dakd_core.tracking import ensure_experiment, redact_text, tracking_uri

    client = _client()
    run_id = os.environ.get("MLFLOW_RUN_ID")
    try:
        if not run_id:
            run_id = client.create_run(
                ensure_experiment(experiment),
                run_name=f"pipeline-{run_name}",
                tags={KFP_RUN_TAG: kfp_run_id, PARENT_TAG: "true", "dakd.run_name": run_name},
            ).info.run_id
        if params:
            _log_pipeline_params(client, run_id, run_name, params)
    except DakdError:
        raise
    except Exception as e:  # unreachable server, bad URI: name it (credentials live in env, not in it)
        raise DakdError(redact_text(f"cannot open the MLflow parent run at {tracking_uri()}: {e}")) from None
    return run_id


def _log_pipeline_params(client, run_id: str, run_name: str, params: dict) -> None:
    from mlflow.entities import Param

    from dakd_core.tracking import TAG_DATASET_PAIR, TAG_PARADIGM, flatten, loggable_params

    client.log_batch(run_id, params=[Param(k, v) for k, v in loggable_params(flatten(params)).items()])
    tags = {"dakd.run_name": run_name, TAG_PARADIGM: params.get("distill_paradigm", "")}
    if params.get("data_source_format") and params.get("data_target_format"):
        tags[TAG_DATASET_PAIR] = f"{params['data_source_format']}->{params['data_target_format']}"
    _set_tags(client, run_id, {k: v for k, v in tags.items() if v})


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


def current_parent_run_id() -> str | None:
    """The pipeline's parent run as a task sees it: the platform's MLFLOW_RUN_ID, else the run the
    first task opened (DAKD_PARENT_RUN_ID, set by the task context)."""
    from dakd_core.orchestration.context import ENV_PARENT_RUN_ID

    return os.environ.get("MLFLOW_RUN_ID") or os.environ.get(ENV_PARENT_RUN_ID) or None


def log_headline(metrics: dict[str, float]) -> str | None:
    """Log the pipeline's headline metrics on its parent run; returns its id (None: no parent run,
    e.g. a task called outside a pipeline, and nothing is logged)."""
    run_id = current_parent_run_id()
    if run_id:
        _client().log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
    return run_id


def tag_parent(tags: dict[str, str]) -> str | None:
    """Set tags on the parent run (None: no parent run, nothing set)."""
    run_id = current_parent_run_id()
    if run_id:
        _set_tags(_client(), run_id, tags)
    return run_id


def _set_tags(client, run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    from dakd_core.tracking import redact

    client.log_batch(run_id, tags=[RunTag(k, redact(k, v)) for k, v in tags.items()])


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def search_tagged(tag: str, value: str) -> list[str]:
    """Ids of the runs of the current experiment (MLFLOW_EXPERIMENT_NAME) tagged `tag` = `value`."""
    from dakd_core.tracking import ensure_experiment

    client = _client()
    runs = client.search_runs([ensure_experiment()], filter_string=f"tags.`{tag}` = '{value}'")
    return sorted(r.info.run_id for r in runs)
