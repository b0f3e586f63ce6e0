"""Source-only pretraining of one network (teacher or student)."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import gpu_component


@gpu_component
def pretrain(
    store_uri: str, run_name: str, role: str, network: str, source_manifest: str,
    source_resize: list, crop: list, batch_size: int, iterations: int, lr: float, optimizer: str, eval_every: int,
    num_workers: int, seed: int, experiment: str, parent_run_id: str, kfp_run_id: str, kfp_task: str,
    metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.common import log_metrics
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    out = pretrain_task(
        store_uri=store_uri, run_name=run_name, role=role, network=network,
        source_manifest=source_manifest, source_resize=source_resize, crop=crop, batch_size=batch_size,
        iterations=iterations, lr=lr, optimizer=optimizer, eval_every=eval_every, num_workers=num_workers, seed=seed,
        experiment=experiment, parent_run_id=parent_run_id,
        kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    log_metrics(metrics, out["metrics"])
    model.uri = out["checkpoint"].split("#")[0]
    model.metadata.update(network=out["network"], checkpoint=out["checkpoint"], stage="pretrain", role=role)
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])
