"""DAKD distillation of the adapted student from the cached adapted teacher.

Paradigm d is b started from a paradigm-c checkpoint, so the pipeline runs this component twice
for d: stage "first" trains c (or the chosen a/b/c), stage "second" trains d from it."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import cpu_component, gpu_component


@gpu_component
def distill(
    store_uri: str, run_name: str, paradigm: str, stage: str, network: str, teacher: str,
    cache_index: str, init: str, source_manifest: str, target_manifest: str, source_resize: list,
    target_resize: list, crop: list, batch_size: int, iterations: int, lr: float, optimizer: str, eval_every: int,
    num_workers: int, seed: int, method: str, lambda_adv_main: float, lambda_adv_aux: float,
    discriminator_width: int,
    lambda_kl: float, lambda_kl_aux: float, lambda_mse: float, lambda_pseudo: float,
    lambda_target: float, temperature: float, kl_reduction: str, seg_loss: str, focal_gamma: float,
    lambda_border_kl: float, lambda_l2_feature: float, lambda_cwd: float, cwd_tau: float,
    lambda_lad: float, feature_level: str, teacher_online: bool, experiment: str, parent_run_id: str,
    kfp_run_id: str, kfp_task: str, metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.common import log_metrics
    from dakd_core.orchestration.tasks.distill import distill_task

    out = distill_task(
        store_uri=store_uri, run_name=run_name, paradigm=paradigm, stage=stage, network=network,
        teacher=teacher, cache_index=cache_index, init=init, source_manifest=source_manifest,
        target_manifest=target_manifest, source_resize=source_resize, target_resize=target_resize,
        crop=crop, batch_size=batch_size, iterations=iterations, lr=lr, optimizer=optimizer, eval_every=eval_every,
        num_workers=num_workers, seed=seed, method=method, lambda_adv_main=lambda_adv_main,
        lambda_adv_aux=lambda_adv_aux, discriminator_width=discriminator_width, lambda_kl=lambda_kl, lambda_kl_aux=lambda_kl_aux,
        lambda_mse=lambda_mse, lambda_pseudo=lambda_pseudo, lambda_target=lambda_target,
        temperature=temperature, kl_reduction=kl_reduction, seg_loss=seg_loss, focal_gamma=focal_gamma,
        lambda_border_kl=lambda_border_kl, lambda_l2_feature=lambda_l2_feature, lambda_cwd=lambda_cwd,
        cwd_tau=cwd_tau, lambda_lad=lambda_lad, feature_level=feature_level,
        teacher_online=teacher_online, experiment=experiment, parent_run_id=parent_run_id,
        kfp_run_id=kfp_run_id, kfp_task=kfp_task,
    )
    log_metrics(metrics, out["metrics"])
    model.uri = out["checkpoint"].split("#")[0]
    model.metadata.update(network=out["network"], checkpoint=out["checkpoint"], stage="distill",
                          paradigm=out["paradigm"])
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])


@cpu_component
def passthrough(value: str) -> str:
    """The Else branch of paradigm d: hands the first distill checkpoint on unchanged, so that
    dsl.OneOf has one output per branch."""
    return value

