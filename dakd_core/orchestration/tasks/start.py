"""First and exit tasks: open the pipeline run's MLflow parent run, and close it."""

from __future__ import annotations

from dakd_core.orchestration.context import run_name_for
from dakd_core.orchestration.parent_run import close_parent_run, open_parent_run
from dakd_core.orchestration.tasks.common import freeze_for_exit


def start_task(*, run_name: str, kfp_run_id: str, experiment: str, cache_shards: int,
               params: dict | None = None) -> dict:
    """Resolve the run name, open the parent run (`params`: every pipeline parameter, logged on
    it), plan the teacher-cache shard slices."""
    name = run_name_for(run_name, kfp_run_id)
    try:
        parent = open_parent_run(experiment, kfp_run_id, name, _as_declared(params) if params else None)
    finally:
        freeze_for_exit()
    return {"run_name": name, "parent_run_id": parent, "shards": list(range(cache_shards))}


def _as_declared(params: dict) -> dict:
    """KFP substitutes each parameter into the dict as text, integers as floats ('512.0'): integer
    pipeline parameters are recorded as `512` (by their PipelineParams type), the rest as given."""
    from dakd_core.orchestration.params import PipelineParams

    fields = PipelineParams.model_fields
    out = {}
    for key, value in params.items():
        if key in fields and fields[key].annotation is int:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None  # not a number: recorded as given
            if number is not None and number.is_integer():
                value = int(number)
        out[key] = value
    return out


def finish_task(*, kfp_run_id: str, experiment: str, state: str) -> str:
    try:
        return close_parent_run(experiment, kfp_run_id, state) or ""
    finally:
        freeze_for_exit()
