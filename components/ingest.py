"""Ingest one domain's dataset into the store: one manifest per split.

The source needs its labelled training split; the target its training split as UNLABELLED images
(the adaptation setting: no target labels reach training) and its labelled validation split."""

from typing import NamedTuple

from kfp.dsl import Metrics, Output

from components._base import cpu_component


@cpu_component
def ingest(
    store_uri: str, run_name: str, fmt: str, root_uri: str, domain: str, splits: list, experiment: str,
    parent_run_id: str, kfp_run_id: str, kfp_task: str, metrics: Output[Metrics],
) -> NamedTuple("IngestOutputs", train_manifest=str, val_manifest=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.ingest import ingest_task

    out = ingest_task(
        store_uri=store_uri, run_name=run_name, fmt=fmt, root_uri=root_uri, domain=domain, splits=splits,
        experiment=experiment, parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    for split, n in out["num_samples"].items():
        metrics.log_metric(f"num_samples_{split}", float(n))
    return namedtuple("IngestOutputs", "train_manifest val_manifest")(out["train_manifest"], out["val_manifest"])
