"""Ingest one domain's dataset into the store: one manifest per split.

The source needs its labelled training split; the target its training split as UNLABELLED images
(the adaptation setting: no target labels reach training) and its labelled validation split.

The manifests also leave as Dataset artifacts (the KFP UI's lineage; metadata: the pinned URI).
Downstream tasks take the pinned manifest URIs, not the artifacts: ingest is uncached, so its
artifacts are new objects in every run, and KFP's cache key holds an input artifact's identity
(not its content), so an artifact input would make every downstream cache key run-specific."""

from typing import NamedTuple

from kfp.dsl import Dataset, Metrics, Output

from components._base import cpu_component


@cpu_component
def ingest(
    store_uri: str, run_name: str, fmt: str, root_uri: str, domain: str, splits: list, experiment: str,
    parent_run_id: str, kfp_run_id: str, kfp_task: str, metrics: Output[Metrics], train_dataset: Output[Dataset],
    val_dataset: Output[Dataset],
) -> NamedTuple("IngestOutputs", train_manifest=str, val_manifest=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.artifacts import publish
    from dakd_core.orchestration.tasks.ingest import ingest_task

    out = ingest_task(
        store_uri=store_uri, run_name=run_name, fmt=fmt, root_uri=root_uri, domain=domain, splits=splits,
        experiment=experiment, parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    for split, n in out["num_samples"].items():
        metrics.log_metric(f"num_samples_{split}", float(n))
    for split, artifact in (("train", train_dataset), ("val", val_dataset)):
        if out[f"{split}_manifest"]:
            sha256 = out[f"{split}_manifest"].partition("#sha256=")[2]
            publish(artifact, out[f"{split}_manifest"], format=fmt, domain=domain, split=split, sha256=sha256,
                    num_samples=out["num_samples"][split], root_uri=root_uri)
    return namedtuple("IngestOutputs", "train_manifest val_manifest")(out["train_manifest"], out["val_manifest"])
