"""First and exit tasks: check the parameters and plan every stage (fail fast, on CPU), open the
pipeline run's MLflow parent run; close it at the end."""

from typing import NamedTuple

from kfp import dsl

from components._base import cpu_component


@cpu_component
def start(params: dict, kfp_run_id: str, kfp_run_name: str) -> NamedTuple(
    # one output per stage of dakd_core.orchestration.plan.STAGES (tests/test_pipeline.py checks it)
    "StartOutputs", run_name=str, parent_run_id=str, pretrain_teacher=str, pretrain_student=str,
    adapt_teacher=str, adapt_student=str, cache_teacher=str, distill_first=str, distill_second=str, export=str, evaluate=str,
    register=str, promote=str,
):
    from collections import namedtuple

    from dakd_core.orchestration.plan import STAGES
    from dakd_core.orchestration.tasks.start import start_task

    out = start_task(params=params, kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name)
    fields = ("run_name", "parent_run_id", *STAGES)
    return namedtuple("StartOutputs", fields)(*(out[name] for name in fields))


@cpu_component
def finish(kfp_run_id: str, experiment: str, status: dsl.PipelineTaskFinalStatus) -> str:
    from dakd_core.orchestration.tasks.start import finish_task

    return finish_task(kfp_run_id=kfp_run_id, experiment=experiment, state=status.state)
