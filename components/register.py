"""Register the exported student in the MLflow model registry (alias `challenger`), then promote
it to `champion` if it beats the current one on the same evaluation manifest."""

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components._base import cpu_component


@cpu_component
def register(
    store_uri: str, run_name: str, config: str, export_record: str, metrics: str, stage_outputs: dict,
    experiment: str, parent_run_id: str, kfp_run_id: str, kfp_task: str,
) -> NamedTuple("RegisterOutputs", name=str, version=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.register import register_task

    out = register_task(
        store_uri=store_uri, run_name=run_name, config=config, export_record=export_record, metrics=metrics,
        stage_outputs=stage_outputs, experiment=experiment, parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    return namedtuple("RegisterOutputs", "name version")(out["name"], out["version"])


@cpu_component
def promote(
    store_uri: str, run_name: str, name: str, version: str, config: str, experiment: str, parent_run_id: str,
    kfp_run_id: str, kfp_task: str, outcome: Output[Markdown],
) -> str:
    from dakd_core.orchestration.tasks.register import promote_task

    out = promote_task(store_uri=store_uri, run_name=run_name, name=name, version=version, config=config,
                       experiment=experiment, parent_run_id=parent_run_id, kfp_run_id=kfp_run_id,
                       kfp_task=kfp_task)
    with open(outcome.path, "w") as f:
        f.write(f"**{out['decision']}**: {out['name']} v{out['challenger']} — {out['reason']}\n")
    return out["decision"]
