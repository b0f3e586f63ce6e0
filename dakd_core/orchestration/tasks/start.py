"""First and exit tasks: check the parameters and plan every stage, open the pipeline run's
MLflow parent run; close it at the end."""

from __future__ import annotations

from dakd_core.orchestration.context import run_name_for
from dakd_core.orchestration.parent_run import close_parent_run, open_parent_run
from dakd_core.orchestration.plan import plan_run
from dakd_core.orchestration.preflight import check_store, require_tracking_uri
from dakd_core.orchestration.tasks.common import freeze_for_exit, run_prefix


def start_task(*, params: dict, kfp_run_id: str, kfp_run_name: str = "") -> dict:
    """Fail fast, then open the run: the parameters are validated and every stage's config is built
    (ConfigError/DataError naming the field, before any GPU task is scheduled) and the dataset
    roots are found; the task's environment must name the tracking store (MLFLOW_TRACKING_URI) and
    the object store and the experiment's artifact store must take a write (SetupError naming the
    variable or URI: dakd_core/orchestration/preflight.py); then the parent run opens with every
    parameter logged, named after the run (`run_name_for`: `dakd run`'s name, else KFP's run
    name). Returns the run name, the parent run id and one JSON settings string per stage
    (dakd_core.orchestration.plan)."""
    try:
        p, plan = plan_run(params)
        name = run_name_for(kfp_run_name, kfp_run_id)
        require_tracking_uri("start")
        check_store(p.data_store_uri, run_prefix(p.data_store_uri, name))
        # opening the parent run first checks the experiment's artifact store (ensure_experiment)
        parent = open_parent_run(p.mlflow_experiment, kfp_run_id, name, p.model_dump(mode="json"))
    finally:
        freeze_for_exit()
    return {"run_name": name, "parent_run_id": parent, **plan}


def finish_task(*, kfp_run_id: str, experiment: str, state: str) -> str:
    try:
        return close_parent_run(experiment, kfp_run_id, state) or ""
    finally:
        freeze_for_exit()
