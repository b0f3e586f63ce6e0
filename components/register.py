"""Register the exported student in the MLflow model registry (alias `challenger`), then promote
it to `champion` if it beats the current one on the same evaluation manifest."""

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components._base import cpu_component, run_prefix, tracked
from dakd_core.orchestration.pins import resolve

DISTILLED_ROW = "student distilled ONNX FP16"  # the artifact registered is the FP16 ONNX file


@tracked("register")
def register_task(*, store_uri: str, run_name: str, experiment: str, export_record: str, metrics: str,
                  source: str, target: str, name: str, paradigm: str, teacher: str) -> dict:
    import os

    from dakd_core.orchestration.context import ENV_KFP_RUN_ID

    from dakd_core.config import build_config
    from dakd_core.registry import RegisterConfig, register

    cfg = build_config(RegisterConfig, export=resolve(export_record), metrics=resolve(metrics),
                       metrics_model=DISTILLED_ROW, source=source, target=target, name=name or None,
                       paradigm=paradigm, teacher=teacher, pipeline_run_id=os.environ.get(ENV_KFP_RUN_ID))
    res = register(cfg)
    return {"name": res.name, "version": res.version}


@tracked("promote")
def promote_task(*, store_uri: str, run_name: str, experiment: str, name: str, version: str,
                 min_gain: float = 0.0) -> dict:
    """Gate the champion alias; the outcome is also written to {run}/promote/outcome.json."""
    import dataclasses
    import json

    from dakd_core.registry import promote
    from dakd_core.storage import write_bytes

    outcome = dataclasses.asdict(promote(name, version=version, min_gain=min_gain))
    write_bytes(f"{run_prefix(store_uri, run_name)}/promote/outcome.json", json.dumps(outcome).encode())
    return outcome


@cpu_component
def register(
    store_uri: str, run_name: str, export_record: str, metrics: str, source: str, target: str,
    name: str, paradigm: str, teacher: str, experiment: str, parent_run_id: str, kfp_run_id: str,
    kfp_task: str,
) -> NamedTuple("RegisterOutputs", name=str, version=str):
    from collections import namedtuple

    from components.register import register_task

    out = register_task(
        store_uri=store_uri, run_name=run_name, export_record=export_record, metrics=metrics,
        source=source, target=target, name=name, paradigm=paradigm, teacher=teacher,
        experiment=experiment, parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    return namedtuple("RegisterOutputs", "name version")(out["name"], out["version"])


@cpu_component
def promote(
    store_uri: str, run_name: str, name: str, version: str, experiment: str, parent_run_id: str,
    kfp_run_id: str, kfp_task: str, outcome: Output[Markdown],
) -> str:
    from components.register import promote_task

    out = promote_task(store_uri=store_uri, run_name=run_name, name=name, version=version,
                       experiment=experiment, parent_run_id=parent_run_id, kfp_run_id=kfp_run_id,
                       kfp_task=kfp_task)
    with open(outcome.path, "w") as f:
        f.write(f"**{out['decision']}**: {out['name']} v{out['challenger']} — {out['reason']}\n")
    return out["decision"]
