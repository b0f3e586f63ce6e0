"""First and exit tasks: open the pipeline run's MLflow parent run, and close it."""

from typing import NamedTuple

from kfp import dsl

from components._base import cpu_component


@cpu_component
def start(run_name: str, kfp_run_id: str, experiment: str, cache_shards: int, params: dict) -> NamedTuple(
    "StartOutputs", run_name=str, parent_run_id=str, shards=list
):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.start import start_task

    out = start_task(run_name=run_name, kfp_run_id=kfp_run_id, experiment=experiment, cache_shards=cache_shards,
                     params=params)
    return namedtuple("StartOutputs", "run_name parent_run_id shards")(
        out["run_name"], out["parent_run_id"], out["shards"]
    )


@cpu_component
def finish(kfp_run_id: str, experiment: str, status: dsl.PipelineTaskFinalStatus) -> str:
    from dakd_core.orchestration.tasks.start import finish_task

    return finish_task(kfp_run_id=kfp_run_id, experiment=experiment, state=status.state)
