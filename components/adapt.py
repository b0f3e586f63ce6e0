"""Output-space adversarial adaptation (AdaptSegNet / ADVENT) of one network from its pretrain
checkpoint."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import gpu_component


@gpu_component
def adapt(
    store_uri: str, run_name: str, role: str, network: str, init: str, source_manifest: str,
    target_manifest: str, source_resize: list, target_resize: list, crop: list, batch_size: int,
    iterations: int, lr: float, optimizer: str, eval_every: int, num_workers: int, seed: int, method: str,
    lambda_adv_main: float, lambda_adv_aux: float, discriminator_width: int, experiment: str, parent_run_id: str,
    kfp_run_id: str, kfp_task: str, metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.common import log_metrics
    from dakd_core.orchestration.tasks.adapt import adapt_task

    out = adapt_task(
        store_uri=store_uri, run_name=run_name, role=role, network=network, init=init,
        source_manifest=source_manifest, target_manifest=target_manifest, source_resize=source_resize,
        target_resize=target_resize, crop=crop, batch_size=batch_size, iterations=iterations, lr=lr, optimizer=optimizer,
        eval_every=eval_every, num_workers=num_workers, seed=seed, method=method,
        lambda_adv_main=lambda_adv_main, lambda_adv_aux=lambda_adv_aux,
        discriminator_width=discriminator_width, experiment=experiment,
        parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    log_metrics(metrics, out["metrics"])
    model.uri = out["checkpoint"].split("#")[0]
    model.metadata.update(network=out["network"], checkpoint=out["checkpoint"], stage="adapt", role=role)
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])
