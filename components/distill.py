"""DAKD distillation of the adapted student from the cached adapted teacher.

Paradigm d is b started from a paradigm-c checkpoint, so the pipeline runs this component twice
for d: stage "first" trains c (or the chosen a/b/c), stage "second" trains d from it."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import cpu_component, gpu_component, run_prefix, tracked
from components.adapt import adapt_fields
from components.pretrain import train_outputs, training_common
from dakd_core.errors import ConfigError
from dakd_core.orchestration.pins import resolve


def stage_paradigm(paradigm: str, stage: str) -> str:
    """The paradigm one distill task trains: for d, c first and d second."""
    if stage == "first":
        return "c" if paradigm == "d" else paradigm
    if stage == "second" and paradigm == "d":
        return "d"
    raise ConfigError(f"stage: '{stage}' with paradigm '{paradigm}' (a second stage exists only for d)")


@tracked("distill")
def distill_task(*, store_uri: str, run_name: str, experiment: str, paradigm: str, stage: str,
                 teacher: str, cache_index: str, init: str, target_manifest: str, target_resize: list,
                 method: str, lambda_adv_main: float, lambda_adv_aux: float, lambda_kl: float,
                 lambda_kl_aux: float, lambda_mse: float, lambda_pseudo: float, lambda_target: float,
                 temperature: float, **train) -> dict:
    from dakd_core.config import build_config
    from dakd_core.train import distill
    from dakd_core.train.distill_config import DistillConfig

    run_paradigm = stage_paradigm(paradigm, stage)
    out = f"{run_prefix(store_uri, run_name)}/distill_{run_paradigm}"
    cfg = build_config(
        DistillConfig,
        **training_common(out=out, experiment=experiment, mlflow_run_name=f"distill-{run_paradigm}", **train),
        **adapt_fields(init=init, target_manifest=target_manifest, target_resize=target_resize, method=method,
                       lambda_adv_main=lambda_adv_main, lambda_adv_aux=lambda_adv_aux),
        paradigm=run_paradigm, teacher=resolve(teacher), teacher_cache=resolve(cache_index),
        lambda_kl=lambda_kl, lambda_kl_aux=lambda_kl_aux, lambda_mse=lambda_mse,
        lambda_pseudo=lambda_pseudo, lambda_target=lambda_target, temperature=temperature,
    )
    return {**train_outputs(distill.run(cfg), cfg.model), "paradigm": run_paradigm}


@gpu_component
def distill(
    store_uri: str, run_name: str, paradigm: str, stage: str, network: str, teacher: str,
    cache_index: str, init: str, source_manifest: str, target_manifest: str, source_resize: list,
    target_resize: list, crop: list, batch_size: int, iterations: int, lr: float, eval_every: int,
    num_workers: int, seed: int, method: str, lambda_adv_main: float, lambda_adv_aux: float,
    lambda_kl: float, lambda_kl_aux: float, lambda_mse: float, lambda_pseudo: float,
    lambda_target: float, temperature: float, experiment: str, parent_run_id: str, kfp_run_id: str,
    kfp_task: str, metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from components._base import log_metrics
    from components.distill import distill_task

    out = distill_task(
        store_uri=store_uri, run_name=run_name, paradigm=paradigm, stage=stage, network=network,
        teacher=teacher, cache_index=cache_index, init=init, source_manifest=source_manifest,
        target_manifest=target_manifest, source_resize=source_resize, target_resize=target_resize,
        crop=crop, batch_size=batch_size, iterations=iterations, lr=lr, eval_every=eval_every,
        num_workers=num_workers, seed=seed, method=method, lambda_adv_main=lambda_adv_main,
        lambda_adv_aux=lambda_adv_aux, lambda_kl=lambda_kl, lambda_kl_aux=lambda_kl_aux,
        lambda_mse=lambda_mse, lambda_pseudo=lambda_pseudo, lambda_target=lambda_target,
        temperature=temperature, experiment=experiment, parent_run_id=parent_run_id,
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

