"""Register the exported student in the MLflow model registry (alias `challenger`), then promote
it to `champion` if it beats the current one on the same evaluation manifest.

Both tasks are uncached (registry writes are side effects) and run-scoped: register also links
the (cached, run-independent) stage runs to the pipeline's MLflow parent run by tags and writes the
run's record of stage outputs, {run}/stages.json."""

from __future__ import annotations

import json
import re

from dakd_core.orchestration.pins import resolve, split
from dakd_core.orchestration.tasks.common import STAGE_OUTPUT_TAG, run_identity, run_prefix, tracked

DISTILLED_ROW = "student distilled ONNX FP16"  # the artifact registered is the FP16 ONNX file
_STAGE_FOLDER = re.compile(r"^(.*/stages/[^/]+/[0-9a-f]{20})(/|$)")


def _paradigm(kw: dict) -> str:
    return json.loads(kw["config"]).get("paradigm", "")


def link_stage_runs(stage_outputs: dict[str, str]) -> dict[str, str]:
    """Tags on the parent run: `dakd.stage.<name>` (the stage's output URI) and
    `dakd.stage_run.<name>` (the MLflow run ids tagged with that stage folder; a cached stage keeps
    the runs of the pipeline run that computed it). Returns the tags set (none without a parent)."""
    from dakd_core.orchestration.parent_run import current_parent_run_id, search_tagged, tag_parent

    if not current_parent_run_id():
        return {}
    tags = {}
    for name, pinned in sorted(stage_outputs.items()):
        uri, _ = split(pinned)
        tags[f"dakd.stage.{name}"] = uri
        match = _STAGE_FOLDER.match(uri)
        if match:
            runs = search_tagged(STAGE_OUTPUT_TAG, match.group(1))
            if runs:
                tags[f"dakd.stage_run.{name}"] = ",".join(runs)
    tag_parent(tags)
    return tags


@tracked("register", lambda kw: run_identity("student", paradigm=_paradigm(kw)))
def register_task(*, store_uri: str, run_name: str, experiment: str, config: str, export_record: str,
                  metrics: str, stage_outputs: dict | None = None) -> dict:
    import os

    from dakd_core.config import build_config
    from dakd_core.orchestration.context import ENV_KFP_RUN_ID
    from dakd_core.orchestration.parent_run import log_headline
    from dakd_core.orchestration.reuse import tag_reused
    from dakd_core.orchestration.tasks.evaluate import headline_metrics
    from dakd_core.registry import RegisterConfig, register
    from dakd_core.storage import read_bytes, write_bytes

    metrics_uri = resolve(metrics)
    cfg = build_config(RegisterConfig, **json.loads(config), export=resolve(export_record), metrics=metrics_uri,
                       metrics_model=DISTILLED_ROW, pipeline_run_id=os.environ.get(ENV_KFP_RUN_ID) or None)
    res = register(cfg)
    models = json.loads(read_bytes(metrics_uri))["models"]
    log_headline(headline_metrics({name: m["miou"] for name, m in models.items()}))
    outputs = {**(stage_outputs or {}), "export": export_record, "evaluate": metrics}
    link_stage_runs(outputs)
    tag_reused(store_uri, run_name)  # what this (local) run reused: orchestration/reuse.py
    write_bytes(f"{run_prefix(store_uri, run_name)}/stages.json", json.dumps(outputs, indent=2).encode())
    return {"name": res.name, "version": res.version}


@tracked("promote")
def promote_task(*, store_uri: str, run_name: str, experiment: str, name: str, version: str,
                 config: str = "{}") -> dict:
    """Gate the champion alias (`min_gain` of the plan, else `PromoteConfig.min_gain`); the outcome,
    including `not-comparable` (champion kept, the task succeeds), is also written to
    {run}/promote/outcome.json."""
    import dataclasses

    from dakd_core.orchestration.parent_run import tag_parent
    from dakd_core.registry import promote
    from dakd_core.storage import write_bytes

    outcome = dataclasses.asdict(promote(name, version=version, min_gain=json.loads(config).get("min_gain")))
    tag_parent({"dakd.registered_version": f"{name}/{outcome['challenger']}",
                "dakd.promotion": outcome["decision"], "dakd.champion": outcome["champion"] or "none"})
    write_bytes(f"{run_prefix(store_uri, run_name)}/promote/outcome.json", json.dumps(outcome).encode())
    return outcome
