"""First and exit tasks: open the pipeline run's MLflow parent run, and close it."""

from __future__ import annotations

from dakd_core.orchestration.context import run_name_for
from dakd_core.orchestration.parent_run import close_parent_run, open_parent_run


def start_task(*, run_name: str, kfp_run_id: str, experiment: str, cache_shards: int) -> dict:
    """Resolve the run name, open the parent run, plan the teacher-cache shard slices."""
    name = run_name_for(run_name, kfp_run_id)
    parent = open_parent_run(experiment, kfp_run_id, name)
    return {"run_name": name, "parent_run_id": parent, "shards": list(range(cache_shards))}


def finish_task(*, kfp_run_id: str, experiment: str, state: str) -> str:
    return close_parent_run(experiment, kfp_run_id, state) or ""
