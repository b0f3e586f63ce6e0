"""Register the exported student in the MLflow model registry (alias `challenger`), then promote
it to `champion` if it beats the current one on the same evaluation manifest."""

from __future__ import annotations

from dakd_core.orchestration.tasks.common import run_identity, run_prefix, tracked
from dakd_core.orchestration.pins import resolve

DISTILLED_ROW = "student distilled ONNX FP16"  # the artifact registered is the FP16 ONNX file


@tracked("register", lambda kw: run_identity("student", paradigm=kw["paradigm"]))
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
                 min_gain: float | None = None) -> dict:
    """Gate the champion alias (`min_gain` None: `PromoteConfig.min_gain`); the outcome, including
    `not-comparable` (champion kept, the task succeeds), is also written to
    {run}/promote/outcome.json."""
    import dataclasses
    import json

    from dakd_core.registry import promote
    from dakd_core.storage import write_bytes

    from dakd_core.orchestration.parent_run import tag_parent

    outcome = dataclasses.asdict(promote(name, version=version, min_gain=min_gain))
    tag_parent({"dakd.registered_version": f"{name}/{outcome['challenger']}",
                "dakd.promotion": outcome["decision"], "dakd.champion": outcome["champion"] or "none"})
    write_bytes(f"{run_prefix(store_uri, run_name)}/promote/outcome.json", json.dumps(outcome).encode())
    return outcome
