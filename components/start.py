"""First and exit tasks: open the pipeline run's MLflow parent run, and close it."""

from typing import NamedTuple

from kfp import dsl

from components._base import cpu_component
from dakd_core.orchestration.context import run_name_for
from dakd_core.orchestration.parent_run import close_parent_run, open_parent_run


def start_task(*, run_name: str, kfp_run_id: str, experiment: str, cache_shards: int) -> dict:
    """Resolve the run name, open the parent run, plan the teacher-cache shard slices."""
    name = run_name_for(run_name, kfp_run_id)
    parent = open_parent_run(experiment, kfp_run_id, name)
    return {"run_name": name, "parent_run_id": parent, "shards": list(range(cache_shards))}


def finish_task(*, kfp_run_id: str, experiment: str, state: str) -> str:
    return close_parent_run(experiment, kfp_run_id, state) or ""


@cpu_component
def start(run_name: str, kfp_run_id: str, experiment: str, cache_shards: int) -> NamedTuple(
    "StartOutputs", run_name=str, parent_run_id=str, shards=list
):
    from collections import namedtuple

    from components.start import start_task

    out = start_task(run_name=run_name, kfp_run_id=kfp_run_id, experiment=experiment, cache_shards=cache_shards)
    return namedtuple("StartOutputs", "run_name parent_run_id shards")(
        out["run_name"], out["parent_run_id"], out["shards"]
    )


@cpu_component
def finish(kfp_run_id: str, experiment: str, status: dsl.PipelineTaskFinalStatus) -> str:
    from components.start import finish_task

    return finish_task(kfp_run_id=kfp_run_id, experiment=experiment, state=status.state)
